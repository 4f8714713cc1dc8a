"""Conversations in and out of the store: JSON that keeps every branch, Markdown of the path shown, and import.

Export (JSON), one conversation or all:

    {"format": "gpt2tui-chats", "version": 1, "exported": "2025-01-31T12:00:00+00:00",
     "conversations": [{"id", "title", "model", "settings", "created", "updated", "active_id",
                        "messages": [{"role", "content"}, ...],   # the path shown, as OpenAI messages
                        "nodes": [{"id", "parent_id", "role", "content", "finish_reason", "created"}, ...]}]}

`messages` starts with the system prompt (from `settings`) when there is one, so the file feeds any OpenAI-style tool;
`nodes` is the whole tree (times are Unix seconds), so importing the file back gives the same branches.

Import reads that, or a JSON list (or JSON lines) of `{"messages": [...]}` records, the fine-tuning format: each record
becomes a conversation, a leading system message its system prompt. Everything is checked before anything is
written, errors are one line naming the file and the place (`conversations[0].nodes[3].parent_id: ...`), and the
conversations go into the store in one transaction: a file is imported whole or not at all.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import GPT2TUIError
from .store import (
    DEFAULT_TITLE,
    ChatStore,
    Conversation,
    Message,
    StoreError,
    export_target,
    to_markdown,
    write_export,
)
from .store_tree import children, descend, path_to

FORMAT = "gpt2tui-chats"
VERSION = 1
TITLE_LENGTH = 48
MAX_IMPORT_BYTES = 512 * 1024 * 1024  # read whole into memory: a bigger file is surely not a chat export


class TransferError(GPT2TUIError, ValueError):
    """A file that cannot be imported, or an export that cannot be made; the message says where and why."""


# -- export --------------------------------------------------------------------------------------------------------


def _node(m: Message) -> dict:
    return {
        "id": m.id,
        "parent_id": m.parent_id,
        "role": m.role,
        "content": m.content,
        "finish_reason": m.finish_reason,
        "created": m.created,
    }


def conversation_record(c: Conversation) -> dict:
    """One conversation (as `ChatStore.get` returns it) in the export format."""
    system = str(c.settings.get("system_prompt") or "").strip()
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": m.role, "content": m.content} for m in c.messages]
    return {
        "id": c.id,
        "title": c.title,
        "model": c.model,
        "settings": c.settings,
        "created": c.created,
        "updated": c.updated,
        "active_id": c.messages[-1].id if c.messages else None,
        "messages": messages,
        "nodes": [_node(m) for m in c.nodes],
    }


def _chosen(store: ChatStore, conversation_id: int | None) -> list[Conversation]:
    ids = [conversation_id] if conversation_id is not None else [c.id for c in store.conversations()]
    return [store.get(i) for i in ids]


def export_json(store: ChatStore, conversation_id: int | None = None) -> str:
    """One conversation, or all (most recent first), as the JSON above."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "conversations": [conversation_record(c) for c in _chosen(store, conversation_id)],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def export_markdown(store: ChatStore, conversation_id: int | None = None) -> str:
    """One conversation, or all separated by rules, as Markdown: each one's path shown, not its other branches."""
    return "\n---\n\n".join(to_markdown(c) for c in _chosen(store, conversation_id))


def export_file(
    store: ChatStore,
    path: str | os.PathLike,
    fmt: str = "json",
    conversation_id: int | None = None,
    default_name: str | None = None,
    create_folder: bool = False,
) -> Path:
    """Write an export to a new file (see `store.export_target` for folders and missing folders); never replaces one.
    `fmt` is "json" or "md"."""
    if fmt not in ("json", "md"):
        raise TransferError(f"unknown export format {fmt!r}; use json or md")
    if conversation_id is None and not store.conversations(limit=1):
        raise TransferError("there are no conversations to export yet")
    name = default_name or default_export_name(conversation_id, fmt)
    target = export_target(path, name, create_folder)
    text = export_json(store, conversation_id) if fmt == "json" else export_markdown(store, conversation_id)
    return write_export(target, text)


def default_export_name(conversation_id: int | None, fmt: str) -> str:
    return f"{'chats' if conversation_id is None else f'chat-{conversation_id}'}.{fmt}"


# -- import: checking --------------------------------------------------------------------------------------------


def _fail(where: str, problem: str) -> TransferError:
    return TransferError(f"{where}: {problem}" if where else problem)


def _text(value: Any, where: str, required: bool = True, default: str = "") -> str:
    if value is None and not required:
        return default
    if not isinstance(value, str):
        raise _fail(where, f"must be text, got {_kind(value)}")
    return value


def _number(value: Any, where: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"must be a time in Unix seconds, got {_kind(value)}")
    return float(value)


def _id(value: Any, where: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value >= 2**63:
        raise _fail(where, f"must be a whole number >= 1, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return {dict: "an object", list: "a list"}[type(value)]
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 40 else shown[:39] + "…"


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, f"must be an object, got {_kind(value)}")
    return value


def _role(value: Any, parent_role: str | None, where: str) -> str:
    # A conversation is user, assistant, user, ...: the chat template renders nothing else, and the app could not
    # continue it. The system prompt lives in the settings.
    want = "user" if parent_role in (None, "assistant") else "assistant"
    if value == "system":
        raise _fail(
            where, "a system message may only come first in 'messages' (it becomes the system prompt)"
        )
    if value not in ("user", "assistant"):
        raise _fail(where, f'must be "user" or "assistant", got {_kind(value)}')
    if value != want:
        after = "first" if parent_role is None else f"after a {parent_role} message"
        raise _fail(
            where, f"is {value!r} where {want!r} was expected {after} (user and assistant take turns)"
        )
    return value


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def _messages(value: Any, where: str) -> tuple[str, list[dict]]:
    """A `messages` list: its system prompt ("" if none) and its user/assistant messages."""
    if not isinstance(value, list) or not value:
        raise _fail(where, "must be a non-empty list of {role, content} objects")
    system, out = "", []
    for j, raw in enumerate(value):
        at = f"{where}[{j}]"
        m = _object(raw, at)
        if j == 0 and m.get("role") == "system":
            system = _text(m.get("content"), f"{at}.content")
            continue
        role = _role(m.get("role"), out[-1]["role"] if out else None, f"{at}.role")
        out.append({"role": role, "content": _text(m.get("content"), f"{at}.content")})
    if not out:
        raise _fail(where, "holds only a system message; a conversation needs at least one user message")
    return system, out


def _chain(messages: list[dict], now: float) -> tuple[list[Message], int]:
    nodes = [
        Message(i + 1, 0, i, m["role"], m["content"], None, now, i or None) for i, m in enumerate(messages)
    ]
    return nodes, len(nodes)


def _nodes(value: Any, where: str, now: float) -> list[Message]:
    """The tree, checked: unique ids, parents that exist, no loops, turns that alternate; parents first."""
    if not isinstance(value, list) or not value:
        raise _fail(where, "must be a non-empty list of message objects")
    raw: dict[int, tuple[dict, str]] = {}
    for j, item in enumerate(value):
        at = f"{where}[{j}]"
        node = _object(item, at)
        node_id = _id(node.get("id"), f"{at}.id")
        if node_id in raw:
            raise _fail(f"{at}.id", f"{node_id} is the id of another node too ({raw[node_id][1]})")
        raw[node_id] = (node, at)
    parents: dict[int, int | None] = {}
    for node_id, (node, at) in raw.items():
        parent = _id(node.get("parent_id"), f"{at}.parent_id", optional=True)
        if parent is not None and parent not in raw:
            raise _fail(f"{at}.parent_id", f"{parent} is not the id of a node in this conversation")
        parents[node_id] = parent
    out: list[Message] = []
    below = children(parents)
    queue = [(root, 0) for root in below.get(None, [])]
    roles: dict[int, str] = {}
    while queue:  # parents before children, as the store inserts them
        node_id, depth = queue.pop(0)
        node, at = raw[node_id]
        parent = parents[node_id]
        role = _role(node.get("role"), None if parent is None else roles[parent], f"{at}.role")
        roles[node_id] = role
        finish = node.get("finish_reason")
        if finish is not None:
            _text(finish, f"{at}.finish_reason")
        out.append(
            Message(
                node_id,
                0,
                depth,
                role,
                _text(node.get("content"), f"{at}.content"),
                finish,
                _number(node.get("created"), f"{at}.created", now),
                parent,
            )
        )
        queue.extend((child, depth + 1) for child in below.get(node_id, []))
    if len(out) < len(raw):  # every parent exists, so what no root reaches hangs in a loop
        at = next(at for node_id, (_, at) in raw.items() if node_id not in roles)
        raise _fail(
            f"{at}.parent_id", "leads around in a loop; following the parents must end at a first message"
        )
    return out


def _conversation(value: Any, where: str, now: float) -> Conversation:
    c = _object(value, where)
    settings = dict(_object(c["settings"], f"{where}.settings")) if c.get("settings") is not None else {}
    has_nodes, has_messages = "nodes" in c, "messages" in c
    if not has_nodes and not has_messages:
        raise _fail(where, "has neither 'messages' nor 'nodes'; a conversation needs one of them")
    system, messages = _messages(c["messages"], f"{where}.messages") if has_messages else ("", [])
    if has_nodes:
        nodes = _nodes(c["nodes"], f"{where}.nodes", now)
        parents = {m.id: m.parent_id for m in nodes}
        active = _id(c.get("active_id"), f"{where}.active_id", optional=True)
        if active is not None and active not in parents:
            raise _fail(f"{where}.active_id", f"{active} is not the id of a node in this conversation")
        if active is None:  # the newest branch, as the app would show it
            roots = [m.id for m in nodes if m.parent_id is None]
            active = descend(parents, max(roots), {})
        if has_messages:
            by_id = {m.id: m for m in nodes}
            shown = [{"role": by_id[i].role, "content": by_id[i].content} for i in path_to(parents, active)]
            j = next(
                (j for j, (a, b) in enumerate(zip(shown, messages, strict=False)) if a != b),
                min(len(shown), len(messages)),
            )
            if j < max(len(shown), len(messages)):
                raise _fail(
                    f"{where}.messages[{j + (1 if system else 0)}]",
                    "differs from the path of 'nodes' to 'active_id'; correct one, or leave 'messages' out",
                )
    else:
        nodes, active = _chain(messages, now)
        if system and not str(settings.get("system_prompt") or "").strip():
            settings["system_prompt"] = system
    first_user = next((m.content for m in nodes if m.role == "user" and m.content.strip()), "")
    created = _number(c.get("created"), f"{where}.created", min((m.created for m in nodes), default=now))
    return Conversation(
        id=_id(c.get("id"), f"{where}.id", optional=True),
        title=_text(c.get("title"), f"{where}.title", required=False, default="")
        or title_from(first_user)
        or DEFAULT_TITLE,
        model=_text(c.get("model"), f"{where}.model", required=False),
        settings=settings,
        created=created,
        updated=_number(c.get("updated"), f"{where}.updated", created),
        nodes=nodes,
        active_id=active,
    )


def parse(document: Any, now: float | None = None) -> list[Conversation]:
    """The conversations of a parsed JSON document (the export format, a list of `{"messages": [...]}` records, or
    one such record), checked; `TransferError` names the first problem and where it is."""
    now = time.time() if now is None else now
    if isinstance(document, dict) and "conversations" in document:
        fmt, version = document.get("format", FORMAT), document.get("version", VERSION)
        if fmt != FORMAT:
            raise _fail("format", f"is {_kind(fmt)}, not {FORMAT!r}: this is not a gpt2tui export")
        if isinstance(version, bool) or not isinstance(version, int) or version > VERSION:
            raise _fail(
                "version",
                f"is {_kind(version)}: written by a newer gpt2tui (this one reads version "
                f"{VERSION}); upgrade gpt2tui",
            )
        items = document["conversations"]
        if not isinstance(items, list) or not items:
            raise _fail("conversations", "must be a non-empty list of conversations")
        return [_conversation(item, f"conversations[{i}]", now) for i, item in enumerate(items)]
    if isinstance(document, list):
        if not document:
            raise TransferError("the list is empty: there is nothing to import")
        return [_conversation(item, f"[{i}]", now) for i, item in enumerate(document)]
    if isinstance(document, dict) and ("messages" in document or "nodes" in document):
        return [_conversation(document, "", now)]
    raise TransferError(
        f"expected a gpt2tui export (an object with 'conversations') or a list of "
        f'{{"messages": [...]}} records, got {_kind(document)}'
    )


def loads(text: str) -> Any:
    """JSON, or JSON lines (one record per line, as fine-tuning files often are)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if len(lines) < 2:
            raise TransferError(
                f"not valid JSON: {whole.msg} at line {whole.lineno}, column {whole.colno}"
            ) from None
        records = []
        for n, line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                # Neither one document nor one per line: the first reading's place is the useful one.
                where = whole if n == lines[0][0] else e
                line_no = whole.lineno if where is whole else n
                raise TransferError(
                    f"not valid JSON (nor JSON lines): {where.msg} at line {line_no}, column {where.colno}"
                ) from None
        return records
    except RecursionError:
        raise TransferError("the JSON is nested too deeply to be a chat export") from None


def read_file(path: str | os.PathLike) -> list[Conversation]:
    """A file's conversations, checked; every error (a missing file, bad JSON, a bad field) is one line that names
    the file."""
    p = Path(os.fspath(path)).expanduser()
    if "\0" in os.fspath(path):
        raise TransferError("a file name cannot contain a NUL byte; type another path")
    try:
        if p.is_dir():
            raise TransferError(f"{p} is a folder; name a .json file to import")
        if p.stat().st_size > MAX_IMPORT_BYTES:
            raise TransferError(f"{p} is larger than {MAX_IMPORT_BYTES >> 20} MiB; that is no chat export")
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TransferError(f"{p} does not exist; check the path") from None
    except UnicodeDecodeError as e:
        raise TransferError(f"{p}: not UTF-8 text (byte {e.start}); is it a JSON file?") from None
    except OSError as e:
        raise TransferError(f"{p}: cannot be read ({e.strerror or e})") from None
    try:
        return parse(loads(text))
    except TransferError as e:
        raise TransferError(f"{p}: {e}") from None


def import_file(store: ChatStore, path: str | os.PathLike) -> list[int]:
    """Import a file's conversations, all in one transaction, and return their ids (in the file's order)."""
    conversations = read_file(path)
    try:
        return store.insert_conversations(conversations)
    except StoreError:
        raise
    except ValueError as e:  # checked above; the database's own checks are the last line
        raise TransferError(f"{path}: {e}") from None
