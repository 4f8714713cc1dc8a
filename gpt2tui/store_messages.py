"""The chat store's messages: appending, updating and deleting them, and moving between a conversation's branches.

A conversation's messages form a tree (see `store_tree`); writes go to its active path unless told otherwise.
"""

from __future__ import annotations

import sqlite3
import time

from .store_errors import ConversationNotFoundError
from .store_records import ACTIVE, ActiveLeaf, Message, check_role, message_from_row
from .store_tree import descend


class MessageQueries:
    """Mixed into `ChatStore`, whose `_write` transactions and `_touch` (the claim every write passes) these use."""

    def _parents(self, db: sqlite3.Connection, conversation_id: int) -> dict[int, int | None]:
        rows = db.execute("SELECT id, parent_id FROM messages WHERE conversation_id = ?", (conversation_id,))
        return {r["id"]: r["parent_id"] for r in rows}

    def _active_id(self, db: sqlite3.Connection, conversation_id: int) -> int | None:
        row = db.execute("SELECT active_id FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise ConversationNotFoundError(f"no conversation {conversation_id}")
        return row["active_id"]

    def _activate(self, db: sqlite3.Connection, conversation_id: int, leaf: int | None) -> None:
        """Show the path to `leaf`, and rank it above its siblings' for later switches to a branch above it."""
        db.execute("UPDATE conversations SET active_id = ? WHERE id = ?", (leaf, conversation_id))
        if leaf is None:
            return
        rank = db.execute(
            "SELECT COALESCE(MAX(selected), 0) + 1 FROM messages WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()[0]
        db.execute(
            "WITH RECURSIVE up(id) AS (SELECT ? UNION SELECT m.parent_id FROM messages m JOIN up ON m.id = up.id "
            "WHERE m.parent_id IS NOT NULL) UPDATE messages SET selected = ? WHERE id IN (SELECT id FROM up)",
            (leaf, rank),
        )

    def _insert(
        self,
        db: sqlite3.Connection,
        conversation_id: int,
        parent_id: int | None,
        role: str,
        content: str,
        finish_reason: str | None,
        created: float,
    ) -> Message:
        check_role(role)
        position = 0
        if parent_id is not None:
            parent = db.execute(
                "SELECT position FROM messages WHERE id = ? AND conversation_id = ?",
                (parent_id, conversation_id),
            ).fetchone()
            if parent is None:
                raise ConversationNotFoundError(f"conversation {conversation_id} has no message {parent_id}")
            position = parent["position"] + 1
        cur = db.execute(
            "INSERT INTO messages (conversation_id, parent_id, position, role, content, finish_reason, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, parent_id, position, role, content, finish_reason, created),
        )
        return Message(
            cur.lastrowid, conversation_id, position, role, content, finish_reason, created, parent_id
        )

    def append_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        finish_reason: str | None = None,
        parent_id: int | None | ActiveLeaf = ACTIVE,
    ) -> Message:
        """Add a message and make it the conversation's active leaf. By default it follows the active path; with
        `parent_id` it branches off there (None: a new first message), and the old continuation stays a branch."""
        check_role(role)
        with self._write() as db:
            self._touch(db, conversation_id)
            parent = self._active_id(db, conversation_id) if isinstance(parent_id, ActiveLeaf) else parent_id
            message = self._insert(db, conversation_id, parent, role, content, finish_reason, time.time())
            self._activate(db, conversation_id, message.id)
        return message

    def update_message(
        self, conversation_id: int, message_id: int, content: str, finish_reason: str | None = None
    ) -> None:
        """Replace a message's text and finish reason: a streaming reply is saved as it grows."""
        with self._write() as db:
            self._touch(db, conversation_id)
            cur = db.execute(
                "UPDATE messages SET content = ?, finish_reason = ? WHERE id = ? AND conversation_id = ?",
                (content, finish_reason, message_id, conversation_id),
            )
            if cur.rowcount == 0:
                raise ConversationNotFoundError(f"conversation {conversation_id} has no message {message_id}")

    def update_last_message(
        self, conversation_id: int, content: str, finish_reason: str | None = None
    ) -> None:
        """Replace the text (and finish reason) of the conversation's active leaf. Raises `ConversationNotFoundError`
        when there is no such conversation or it has no message."""
        with self._write() as db:
            self._touch(db, conversation_id)
            cur = db.execute(
                "UPDATE messages SET content = ?, finish_reason = ? WHERE conversation_id = ? AND id = "
                "(SELECT active_id FROM conversations WHERE id = ?)",
                (content, finish_reason, conversation_id, conversation_id),
            )
            if cur.rowcount == 0:
                raise ConversationNotFoundError(f"conversation {conversation_id} has no message to update")

    def delete_last_message(self, conversation_id: int) -> Message | None:
        """Remove the active leaf (and anything below it) and return it; its parent becomes the active leaf. None if
        there was none."""
        with self._write() as db:
            self._touch(db, conversation_id)
            row = db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? AND id = ?",
                (conversation_id, self._active_id(db, conversation_id)),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM messages WHERE id = ?", (row["id"],))
            self._activate(db, conversation_id, row["parent_id"])
        return message_from_row(row)

    def switch_branch(self, conversation_id: int, message_id: int) -> int:
        """Show the branch through `message_id`: the active leaf becomes the one below it that was shown last (or the
        newest). Returns that leaf's id."""
        with self._write() as db:
            self._touch(db, conversation_id)
            parents = self._parents(db, conversation_id)
            if message_id not in parents:
                raise ConversationNotFoundError(f"conversation {conversation_id} has no message {message_id}")
            rank = {
                r["id"]: r["selected"]
                for r in db.execute(
                    "SELECT id, selected FROM messages WHERE conversation_id = ?", (conversation_id,)
                )
            }
            leaf = descend(parents, message_id, rank)
            self._activate(db, conversation_id, leaf)
        return leaf
