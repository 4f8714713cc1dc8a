"""A conversation's messages as a tree: each message has a parent (None for the first), so an edited message or a
regenerated reply is a sibling of the one it replaces, and the old continuation stays as a branch. A conversation
shows one path through the tree, from a root to its active leaf.

This module holds what the store and the import/export code share: the schema migration that turned today's list of
messages into a tree, and walking a tree given as `{id: parent_id}`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping


def v1_to_v2(db: sqlite3.Connection) -> None:
    """Messages in a list (`position` 0, 1, 2, ...) become a chain: each one's parent is the one before it, and the
    last one is the conversation's active leaf. Ids, text, finish reasons and times are kept as they are."""
    # The old table is renamed, not copied over: its UNIQUE (conversation_id, position) allows one message per depth,
    # which a tree does not, and SQLite cannot drop a constraint in place.
    for sql in (
        "ALTER TABLE messages RENAME TO messages_v1",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            parent_id INTEGER REFERENCES messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            finish_reason TEXT,
            created REAL NOT NULL,
            selected INTEGER NOT NULL DEFAULT 0
        )""",
        # position: the depth (0 for a root). selected: when the message was last on its conversation's shown path
        # (a counter per conversation); switching to a branch follows, at each fork, the child seen last.
        """INSERT INTO messages (id, conversation_id, parent_id, position, role, content, finish_reason, created)
           SELECT id, conversation_id, LAG(id) OVER w, ROW_NUMBER() OVER w - 1, role, content, finish_reason, created
           FROM messages_v1 WINDOW w AS (PARTITION BY conversation_id ORDER BY position)""",
        "CREATE INDEX messages_by_conversation ON messages (conversation_id, position)",
        "CREATE INDEX messages_by_parent ON messages (parent_id)",
        "ALTER TABLE conversations ADD COLUMN active_id INTEGER",
        """UPDATE conversations SET active_id = (SELECT m.id FROM messages_v1 m WHERE m.conversation_id = conversations.id
           ORDER BY m.position DESC LIMIT 1)""",
        "DROP TABLE messages_v1",
    ):
        db.execute(sql)


def path_to(parents: Mapping[int, int | None], leaf: int | None) -> list[int]:
    """The ids from a root down to `leaf`. A parent that is missing ends the path there, and a loop (only a
    hand-edited file has one) is cut where it closes: what is shown is always a path."""
    path: list[int] = []
    seen: set[int] = set()
    node = leaf
    while node is not None and node in parents and node not in seen:
        seen.add(node)
        path.append(node)
        node = parents[node]
    path.reverse()
    return path


def children(parents: Mapping[int, int | None]) -> dict[int | None, list[int]]:
    """Each id's children (None: the roots), oldest first: ids grow with time, so siblings keep the order they were
    written in."""
    out: dict[int | None, list[int]] = {}
    for node in sorted(parents):
        out.setdefault(parents[node], []).append(node)
    return out


def descend(parents: Mapping[int, int | None], start: int, rank: Mapping[int, int]) -> int:
    """The leaf reached from `start` by taking, at each fork, the child that ranks highest (last seen), ties to the
    newest."""
    below = children(parents)
    node, seen = start, {start}
    while below.get(node):
        node = max(below[node], key=lambda c: (rank.get(c, 0), c))
        if node in seen:
            break
        seen.add(node)
    return node
