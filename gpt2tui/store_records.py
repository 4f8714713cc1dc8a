"""The chat store's records: a `Conversation` and its `Message`s as read from the database, and the rows they are
made from. `gpt2tui.store` re-exports the public names here."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
DEFAULT_TITLE = "New chat"


@dataclass
class Message:
    id: int
    conversation_id: int
    position: int  # its depth in the conversation's tree: 0, 1, 2, ... along a path
    role: str
    content: str
    finish_reason: str | None
    created: float  # Unix time
    parent_id: int | None = None  # None: the conversation's first message (or one of its alternatives)

    def to_chat(self) -> dict:
        """As `gpt2tui.chat` messages are: role, content, and a reply's finish reason."""
        out = {"role": self.role, "content": self.content}
        if self.finish_reason is not None:
            out["finish_reason"] = self.finish_reason
        return out


@dataclass
class Conversation:
    id: int
    title: str
    model: str
    settings: dict
    created: float
    updated: float
    messages: list[Message] = field(default_factory=list)  # the shown path, root first; filled by `get`
    # Every message, branches too, oldest first; filled by `get`.
    nodes: list[Message] = field(default_factory=list)
    active_id: int | None = None  # the shown path's last message

    def siblings(self, message_id: int) -> list[Message]:
        """The message and its alternatives (the same parent), oldest first."""
        found = [m.parent_id for m in self.nodes if m.id == message_id]
        return [m for m in self.nodes if m.parent_id == found[0]] if found else []


def message_from_row(row: sqlite3.Row) -> Message:
    return Message(
        row["id"],
        row["conversation_id"],
        row["position"],
        row["role"],
        row["content"],
        row["finish_reason"],
        row["created"],
        row["parent_id"],
    )


def conversation_from_row(row: sqlite3.Row) -> Conversation:
    try:
        settings = json.loads(row["settings"])
    except (ValueError, RecursionError):
        settings = {}  # a hand-edited row: the conversation still opens, with default settings
    if not isinstance(settings, dict):
        settings = {}
    keys = row.keys()
    return Conversation(
        row["id"],
        row["title"],
        row["model"],
        settings,
        row["created"],
        row["updated"],
        active_id=row["active_id"] if "active_id" in keys else None,
    )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


class ActiveLeaf:
    """The conversation's active leaf, whichever it is when the write is made (`ACTIVE`, the default parent)."""


ACTIVE = ActiveLeaf()
