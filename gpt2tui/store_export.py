"""Exporting a conversation: where a file typed by the user goes, writing it whole without ever replacing one, and the
Markdown a conversation becomes. `gpt2tui.store` re-exports every name here; `gpt2tui.transfer` builds its exports on
these."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from .atomic import write_new
from .store_errors import ExportFolderMissingError, StoreError
from .store_records import Conversation


def export_target(path: str | os.PathLike, default_name: str, create_folder: bool = False) -> Path:
    """Where an export typed as `path` goes: `path` itself, or for a folder (or a path ending with a separator)
    `default_name` inside it, stepping aside from existing files. Raises `ExportFolderMissingError` for a folder
    that does not exist unless `create_folder`, and `StoreError` for a path that cannot be one."""
    text = os.fspath(path)
    if "\0" in text:
        raise StoreError("a file name cannot contain a NUL byte; type another path")
    target = Path(text).expanduser()
    if text.endswith((os.sep, os.altsep or os.sep)) or target.is_dir():
        target = free_name(target / default_name)
    if not target.parent.is_dir():
        if target.parent.exists():
            raise StoreError(f"{target.parent} is a file, not a folder; export somewhere else")
        if not create_folder:
            raise ExportFolderMissingError(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
    return target


def write_export(target: Path, text: str) -> Path:
    """Write a new file, whole; one that exists (even made an instant before by another process) is never replaced."""
    try:
        return write_new(target, text)
    except FileExistsError:
        raise StoreError(
            f"{target} already exists; export to another path (an export never replaces a file)"
        ) from None


_NOTES = {
    "cancelled": "stopped",
    "max_tokens": "cut off: max new tokens reached",
    "context_full": "cut off: context window full",
    "error": "ended by an error",
}


def to_markdown(conversation: Conversation) -> str:
    """A conversation as a Markdown document: title, model and dates, the system prompt, then each message."""
    when = datetime.fromtimestamp(conversation.created).strftime("%Y-%m-%d %H:%M")
    meta = f"*{conversation.model or 'unknown model'} · started {when}*"
    parts = [f"# {conversation.title}", meta]
    system = str(conversation.settings.get("system_prompt") or "").strip()
    if system:
        parts.append(f"**System prompt:** {system}")
    for m in conversation.messages:
        parts.append(f"## {m.role.capitalize()}")
        parts.append(m.content if m.content.strip() else "*(empty)*")
        if m.finish_reason in _NOTES:
            parts.append(f"*[{_NOTES[m.finish_reason]}]*")
    return "\n\n".join(parts) + "\n"


def free_name(name: str | os.PathLike) -> Path:
    """`name`, or `stem-2.suffix`, `stem-3.suffix`, ...: the first that does not exist (exports never replace a
    file, so their default names step aside)."""
    path = Path(name).expanduser()
    n = 1
    while path.exists() or path.is_symlink():
        n += 1
        path = path.with_name(f"{Path(name).stem}-{n}{Path(name).suffix}")
    return path
