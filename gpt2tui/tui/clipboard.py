"""Copying: the code blocks of a message, and the system clipboard where one is reachable.

The app always copies through the terminal (OSC 52, `App.copy_to_clipboard`), which works over SSH and in most
terminals but not all (tmux needs `set -g set-clipboard on`; macOS Terminal ignores it). Where a clipboard program is
on PATH for the session the app runs in, it gets the text too, run without a shell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from markdown_it import MarkdownIt

# Textual's Markdown widget parses with this preset: the same blocks, in the same order, as the numbers on screen.
_PARSER = MarkdownIt("gfm-like")
CLIPBOARD_TIMEOUT = (
    2.0  # seconds; a clipboard program that hangs (no display after all) must not hold the app
)


@dataclass(frozen=True)
class CodeBlock:
    number: int  # from 1, in document order
    language: str
    code: str

    @property
    def lines(self) -> int:
        return self.code.count("\n") + 1 if self.code else 0


def code_blocks(markdown: str) -> list[CodeBlock]:
    """The fenced and indented code blocks of a Markdown text, numbered as the reply shows them."""
    tokens = _PARSER.parse(markdown)
    found = [t for t in tokens if t.type in ("fence", "code_block")]
    return [CodeBlock(i, t.info.strip(), t.content.rstrip()) for i, t in enumerate(found, start=1)]


def clipboard_command(environ: dict[str, str] | None = None) -> list[str] | None:
    """The program that sets the system clipboard here, with its arguments; None when there is none."""
    env = os.environ if environ is None else environ
    candidates: list[list[str]] = []
    if sys.platform == "darwin":
        candidates.append(["pbcopy"])
    elif sys.platform == "win32":
        candidates.append(["clip"])
    else:
        if env.get("WAYLAND_DISPLAY"):
            candidates.append(["wl-copy"])
        if env.get("DISPLAY"):
            candidates += [["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    for command in candidates:
        path = shutil.which(command[0])
        if path:
            return [path, *command[1:]]
    return None


def copy_to_system(text: str, command: list[str] | None = None) -> str | None:
    """Give `text` to the system clipboard; the program's name when it took it, None when none is here or it
    failed (the terminal's copy still stands, so a failure is no error)."""
    command = command or clipboard_command()
    if command is None:
        return None
    try:
        done = subprocess.run(
            command,
            input=text.encode("utf-8"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=CLIPBOARD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return os.path.basename(command[0]) if done.returncode == 0 else None
