"""The chat store's conversations: making, listing, reading, renaming and deleting them, writing one whole (the apps'
catch-up after failed writes, and imports), and finding and exporting them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .store_errors import ConversationNotFoundError
from .store_export import export_target, to_markdown, write_export
from .store_records import (
    DEFAULT_TITLE,
    Conversation,
    check_role,
    conversation_from_row,
    message_from_row,
)
from .store_tree import descend, path_to


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ConversationQueries:
    """Mixed into `ChatStore`, whose connection, lock, `_write` transactions and claims these use, and whose
    `MessageQueries` place the messages of a conversation written whole."""

    def create(
        self, title: str = DEFAULT_TITLE, model: str = "", settings: Mapping[str, Any] | None = None
    ) -> Conversation:
        with self._write() as db:
            now = time.time()
            cur = db.execute(
                "INSERT INTO conversations (title, model, settings, created, updated) VALUES (?, ?, ?, ?, ?)",
                (title, model, json.dumps(dict(settings or {})), now, now),
            )
            self._touch(db, cur.lastrowid)
            row = db.execute("SELECT * FROM conversations WHERE id = ?", (cur.lastrowid,)).fetchone()
        return conversation_from_row(row)

    def conversations(self, limit: int | None = None) -> list[Conversation]:
        """All conversations, without their messages, most recently updated first."""
        sql = "SELECT * FROM conversations ORDER BY updated DESC, id DESC"
        rows = self._read(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [conversation_from_row(r) for r in rows]

    def get(self, conversation_id: int) -> Conversation:
        """One conversation: `messages` is the path shown (root first), `nodes` every message, branches too."""
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                raise ConversationNotFoundError(f"no conversation {conversation_id}")
            rows = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
            ).fetchall()
        conversation = conversation_from_row(row)
        conversation.nodes = [message_from_row(r) for r in rows]
        parents = {m.id: m.parent_id for m in conversation.nodes}
        leaf = conversation.active_id
        roots = [m.id for m in conversation.nodes if m.parent_id is None]
        if leaf not in parents and roots:  # a hand-edited file lost it: the branch shown last
            rank = {r["id"]: r["selected"] for r in rows}
            leaf = descend(parents, max(roots, key=lambda i: (rank[i], i)), rank)
        by_id = {m.id: m for m in conversation.nodes}
        conversation.messages = [by_id[i] for i in path_to(parents, leaf)]
        return conversation

    def rename(self, conversation_id: int, title: str) -> None:
        with self._write() as db:
            self._touch(db, conversation_id)
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def delete(self, conversation_id: int) -> None:
        """Delete a conversation and its messages."""
        with self._write() as db:
            self._claimed(conversation_id)
            if db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount == 0:
                raise ConversationNotFoundError(f"no conversation {conversation_id}")
        self.release(conversation_id)

    def save_settings(self, conversation_id: int, settings: Mapping[str, Any]) -> None:
        with self._write() as db:
            self._touch(db, conversation_id)
            db.execute(
                "UPDATE conversations SET settings = ? WHERE id = ?",
                (json.dumps(dict(settings)), conversation_id),
            )

    def set_model(self, conversation_id: int, model: str) -> None:
        with self._write() as db:
            self._touch(db, conversation_id)
            db.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id))

    # -- whole conversations -------------------------------------------------------------------------------------

    def save_conversation(
        self,
        conversation_id: int | None,
        title: str,
        model: str,
        settings: Mapping[str, Any],
        messages: list[dict],
        wait: float | None = None,
    ) -> int:
        """Make the conversation's active path in the database equal to this one, in one transaction, and return its
        id: what the apps call to catch up after writes failed (a full disk, a busy database). `conversation_id`
        None, or one that is gone, makes a new conversation. Messages the path already has, in order, are left as
        they are; from the first that differs on, these are written as a branch beside the stored ones, which stay
        (a reply saved only in part is completed in place instead). `wait` as in `_write`."""
        with self._write(wait) as db:
            exists = "SELECT 1 FROM conversations WHERE id = ?"
            found = (
                conversation_id is not None and db.execute(exists, (conversation_id,)).fetchone() is not None
            )
            if found and not self.claim(conversation_id):
                # Another gpt2tui writes that one now: this one is kept whole as a conversation of its own.
                found, title = False, f"{title} (continued)"
            now = time.time()
            if found:
                db.execute(
                    "UPDATE conversations SET title = ?, model = ?, settings = ? WHERE id = ?",
                    (title, model, json.dumps(dict(settings)), conversation_id),
                )
            else:
                conversation_id = db.execute(
                    "INSERT INTO conversations (title, model, settings, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (title, model, json.dumps(dict(settings)), now, now),
                ).lastrowid
            self._touch(db, conversation_id)
            rows = {
                r["id"]: r
                for r in db.execute("SELECT * FROM messages WHERE conversation_id = ?", (conversation_id,))
            }
            parents = {i: r["parent_id"] for i, r in rows.items()}
            path = [rows[i] for i in path_to(parents, self._active_id(db, conversation_id))]
            same = 0
            for row, m in zip(path, messages, strict=False):
                stored = (row["role"], row["content"], row["finish_reason"])
                if stored != (m["role"], m["content"], m.get("finish_reason")):
                    break
                same += 1
            parent = path[same - 1]["id"] if same else None
            rest = messages[same:]
            if rest and same == len(path) - 1:
                # The stored leaf: a reply whose last saves failed is the same reply, grown.
                stale = path[same]
                if stale["role"] == rest[0]["role"] and (
                    stale["finish_reason"] is None or rest[0]["content"].startswith(stale["content"])
                ):
                    db.execute(
                        "UPDATE messages SET content = ?, finish_reason = ? WHERE id = ?",
                        (rest[0]["content"], rest[0].get("finish_reason"), stale["id"]),
                    )
                    parent, rest = stale["id"], rest[1:]
            for m in rest:
                message = self._insert(
                    db, conversation_id, parent, m["role"], m["content"], m.get("finish_reason"), now
                )
                parent = message.id
            self._activate(db, conversation_id, parent)
        return conversation_id

    def insert_conversations(self, conversations: list[Conversation]) -> list[int]:
        """Add whole conversations, with every branch, in one transaction: all of them, or on any error none. Each
        keeps its ids (its own and its messages') when none is taken here, so an export imported into a fresh data
        directory is the same tree under the same ids; otherwise it is numbered anew and its parent links follow.
        Parents must come before their children in `nodes`. Returns the conversations' ids."""
        for c in conversations:
            for m in c.nodes:
                check_role(m.role)
        ids = []
        with self._write() as db:
            for c in conversations:
                node_ids = [m.id for m in c.nodes]
                keep = (
                    c.id is not None
                    and db.execute("SELECT 1 FROM conversations WHERE id = ?", (c.id,)).fetchone() is None
                )
                if keep and node_ids:
                    low, high = min(node_ids), max(node_ids)
                    taken = {
                        r[0]
                        for r in db.execute("SELECT id FROM messages WHERE id BETWEEN ? AND ?", (low, high))
                    }
                    keep = not taken.intersection(node_ids)
                cid = db.execute(
                    "INSERT INTO conversations (id, title, model, settings, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        c.id if keep else None,
                        c.title,
                        c.model,
                        json.dumps(dict(c.settings)),
                        c.created,
                        c.updated,
                    ),
                ).lastrowid
                self._claimed(cid)
                new: dict[int, int] = {}
                for m in c.nodes:
                    parent = None if m.parent_id is None else new[m.parent_id]
                    cur = db.execute(
                        "INSERT INTO messages (id, conversation_id, parent_id, position, role, content, finish_reason, "
                        "created) VALUES (?, ?, ?, (SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE id = ?),"
                        " ?, ?, ?, ?)",
                        (
                            m.id if keep else None,
                            cid,
                            parent,
                            parent,
                            m.role,
                            m.content,
                            m.finish_reason,
                            m.created,
                        ),
                    )
                    new[m.id] = cur.lastrowid
                self._activate(db, cid, new.get(c.active_id) if c.active_id is not None else None)
                ids.append(cid)
        return ids

    # -- finding and exporting -----------------------------------------------------------------------------------

    def search(self, text: str, limit: int = 100) -> list[Conversation]:
        """Conversations whose title or any message contains `text`, ignoring case (Unicode too), most recently
        updated first. `%` and `_` are matched literally."""
        if not text.strip():
            return self.conversations(limit)
        pattern = f"%{_escape_like(text.casefold())}%"
        rows = self._read(
            "SELECT * FROM conversations c WHERE casefold(c.title) LIKE :p ESCAPE '\\' OR EXISTS ("
            "SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND casefold(m.content) LIKE :p ESCAPE '\\') "
            "ORDER BY c.updated DESC, c.id DESC LIMIT :n",
            {"p": pattern, "n": limit},
        )
        return [conversation_from_row(r) for r in rows]

    def export_markdown(self, conversation_id: int) -> str:
        return to_markdown(self.get(conversation_id))

    def export_markdown_file(
        self,
        conversation_id: int,
        path: str | os.PathLike,
        default_name: str | None = None,
        create_folder: bool = False,
    ) -> Path:
        """Write the conversation as Markdown to a new file at `path`, whole (a temporary file linked into place).

        A `path` that is a folder, or ends with a separator, gets a file named `default_name` in it (by default
        `chat-ID.md`, stepping aside from existing files). An existing file is never replaced, even one another
        process made an instant before: `StoreError` says so. A folder that does not exist raises
        `ExportFolderMissingError` unless `create_folder`: the user is asked first."""
        target = export_target(path, default_name or f"chat-{conversation_id}.md", create_folder)
        return write_export(target, self.export_markdown(conversation_id))
