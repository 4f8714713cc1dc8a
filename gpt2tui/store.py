"""Conversations kept in SQLite, at `$XDG_DATA_HOME/gpt2tui/chats.db` (default `~/.local/share/gpt2tui/chats.db`).

Every write commits at once, in WAL mode, so a killed process loses nothing that was written: the chat app saves a
reply as it streams (`append_message` with the first text, then `update_message`), and at most the text since
its last update is lost.

A conversation's messages form a tree (`store_tree`): each has a parent, an edited message or a regenerated reply is
a sibling of the one before it, and the conversation shows the path to its active leaf (`Conversation.messages`;
`nodes` holds them all). Writes follow that path unless given a `parent_id`; `switch_branch` moves it.

Threads: one connection, opened with `check_same_thread=False` and guarded by a lock, so the app's UI thread and its
generation worker can share one `ChatStore`; each call holds the lock for its statements.

A file that is not a database, or a corrupt one, is moved aside to `chats.db.corrupt-<timestamp>` (with its `-wal`
and `-shm` files, so it can still be opened and recovered by hand) with a `DatabaseMovedWarning`, and a new one is
made. Nothing else is ever moved, deleted or replaced. A busy database is not a damaged one: another gpt2tui, a
backup tool or a slow disk holding it is waited for (`timeout`); one still held then is opened read-only
(`read_only` says why), its history shown, and writes raise `StoreWriteError` until it is free again. A new database
is made under a temporary name and linked into place, so two first starts never see each other's half-made file.

A write that cannot be made (the database busy, a full disk, a read-only file) is rolled back and raises
`StoreWriteError`, whose `kind` says which; the caller keeps what it meant to write and catches up later with
`save_conversation`, which makes a conversation in the file equal to the one in memory. A database from a newer
gpt2tui, or a folder that cannot be made, raises `StoreError`.

Two processes on one conversation would interleave their messages and overwrite each other's replies, so a
conversation is written only by the store that holds it: `claim` takes a per-conversation lock (`flock` on a file
in `chats.db.locks/`, released when the store closes or its process dies), and every write claims the conversation
first. One held elsewhere raises `ConversationInUseError`; the apps show it read-only and say so.

The schema version is `PRAGMA user_version`; `MIGRATIONS[v]` takes a database from version v to v + 1.

This module holds the schema, opening the file (and what happens when it is damaged or busy) and the write
transaction. `ChatStore` takes its queries from mixins beside it: `store_claims` (the per-conversation locks),
`store_conversations` and `store_messages`; `store_records`, `store_errors` and `store_export` hold the records,
the errors and the Markdown export. Import all of them from here: `gpt2tui.store` re-exports every public name.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from .store_claims import ConversationClaims
from .store_conversations import ConversationQueries
from .store_errors import (
    ConversationInUseError,
    ConversationNotFoundError,
    DatabaseMovedWarning,
    ExportFolderMissingError,
    StoreError,
    StoreWriteError,
    is_busy,
    is_unreadable,
    one_line,
    write_error,
)
from .store_export import export_target, free_name, to_markdown, write_export
from .store_messages import MessageQueries
from .store_records import ACTIVE, DEFAULT_TITLE, ROLES, Conversation, Message
from .store_tree import v1_to_v2

# What other modules import from here, wherever it lives now.
__all__ = [
    "ACTIVE",
    "DEFAULT_TITLE",
    "MIGRATIONS",
    "ROLES",
    "SCHEMA_VERSION",
    "ChatStore",
    "Conversation",
    "ConversationInUseError",
    "ConversationNotFoundError",
    "DatabaseMovedWarning",
    "ExportFolderMissingError",
    "Message",
    "StoreError",
    "StoreWriteError",
    "data_dir",
    "default_path",
    "export_target",
    "free_name",
    "to_markdown",
    "write_export",
]


def data_dir() -> Path:
    # As weights.data_dir, which imports torch: the store must open before torch has loaded.
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "gpt2tui"


def default_path() -> Path:
    """Where the chats live; XDG_DATA_HOME is read at call time."""
    return data_dir() / "chats.db"


# -- schema --------------------------------------------------------------------------------------------------------


def _v0_to_v1(db: sqlite3.Connection) -> None:
    # Statement by statement: executescript would commit the migration's transaction half-way.
    for sql in (
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        "CREATE INDEX conversations_by_updated ON conversations (updated)",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            finish_reason TEXT,
            created REAL NOT NULL,
            UNIQUE (conversation_id, position)
        )""",
    ):
        db.execute(sql)


# MIGRATIONS[v] upgrades version v to v + 1, inside the same transaction as the version bump.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v0_to_v1, v1_to_v2]
SCHEMA_VERSION = len(MIGRATIONS)


# -- the store -----------------------------------------------------------------------------------------------------


class ChatStore(ConversationClaims, ConversationQueries, MessageQueries):
    """The conversations database. `ChatStore()` opens (or creates) the default one; use it as a context manager or
    call `close()`. `ChatStore.temporary()` is one in memory, which keeps nothing after `close()`: the apps fall back
    to it when the history cannot be opened, and say so."""

    MEMORY = ":memory:"

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 5.0):
        self.in_memory = os.fspath(path) == self.MEMORY if path is not None else False
        self.path = Path(path) if path is not None else default_path()
        self.timeout = timeout
        self._lock = threading.RLock()
        self.read_only: str | None = None  # why this store cannot write, while it cannot
        self._claims: dict[int, int] = {}  # conversation id -> the file descriptor whose flock holds it
        if self.in_memory:
            self._db = self._open()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot make the folder {self.path.parent} for the chat history ({e.strerror or e})"
            ) from None
        if not self.path.exists():
            self._create()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            if is_busy(e):
                self._db = self._open_read_only(e)
                return
            if not is_unreadable(e):
                raise StoreError(f"cannot open the chat database {self.path}: {e}") from None
            moved = self._move_aside()
            warnings.warn(
                f"the chat database {self.path} could not be used ({one_line(e)}); moved it to {moved} "
                f"and started a new one",
                DatabaseMovedWarning,
                stacklevel=2,
            )
            self._db = self._open()

    @classmethod
    def temporary(cls) -> ChatStore:
        """A store in memory: the conversations of this run only."""
        return cls(cls.MEMORY)

    def _create(self) -> None:
        """A new database, made whole under a temporary name and linked into place: a process that opens the path a
        moment later finds either no file or a complete database, never one half made. Losing the race to another
        process is fine: its database is the same."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.new")
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                self._migrate(db)
                # The pages of the tables later versions replaced: none left on the free list.
                db.execute("VACUUM")
            finally:
                db.close()  # the last connection: its WAL is checkpointed into the file and removed
            os.link(tmp, self.path)
        except FileExistsError:
            pass
        except (OSError, sqlite3.Error):
            pass  # no hard links here, or no space: opening the path below makes it, or says why it cannot
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)

    def _open(self, timeout: float | None = None) -> sqlite3.Connection:
        target = self.MEMORY if self.in_memory else self.path
        wait = self.timeout if timeout is None else timeout
        db = sqlite3.connect(target, timeout=wait, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            if not self.in_memory and db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise StoreError(
                    f"cannot put the chat database {self.path} in WAL mode (is it on a network drive?)"
                )
            # integrity_check without the slow index checks
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a killed process
            db.execute("PRAGMA foreign_keys=ON")
            _add_functions(db)
            # Only a database that needs it takes the write lock here: one another process is writing to opens at once.
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._migrate(db)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not self.in_memory and not {"conversations", "messages"} <= tables:
                # The schema's version says the tables are there: a file without them is damaged, not new.
                raise sqlite3.DatabaseError(
                    "database disk image is malformed: a table of the schema is missing"
                )
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self, busy: sqlite3.DatabaseError) -> sqlite3.Connection:
        """The database another process holds, for reading: its history is shown, writes wait for it to be free."""
        uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
        try:
            db = sqlite3.connect(
                uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            db.row_factory = sqlite3.Row
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:  # being made or upgraded by the process that holds it
                db.close()
                raise StoreError(
                    f"the chat history {self.path} is in use by another process ({one_line(busy)})"
                )
            _add_functions(db)
        except sqlite3.Error as e:
            raise StoreError(
                f"the chat history {self.path} is in use by another process ({one_line(e)})"
            ) from None
        self.read_only = "the chat history is in use by another process"
        return db

    def _writable(self) -> None:
        """Back to a read-write connection once the process that held the database lets go."""
        if self.read_only is None:
            return
        try:
            # A try on each write; the caller keeps what it meant to write meanwhile.
            db = self._open(timeout=0.1)
        except sqlite3.DatabaseError as e:
            raise self._write_error(e) from None
        self._db.close()
        self._db, self.read_only = db, None

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the chat database {self.path} was written by a newer gpt2tui (schema {version}, this one "
                    f"knows {SCHEMA_VERSION}); upgrade gpt2tui"
                )
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _move_aside(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        # The journal first: a database never sits beside someone else's journal.
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, target.with_name(target.name + suffix))
        os.replace(self.path, target)
        return target

    def close(self) -> None:
        with self._lock:
            for conversation_id in list(self._claims):
                self.release(conversation_id)
            self._db.close()

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """One transaction, committed on leaving: each public write is durable when it returns. One that cannot be
        made is rolled back whole and raises `StoreWriteError`. `wait`: how long to wait for a database another
        process holds, if not `timeout` (a retry from a UI thread must not freeze it)."""
        with self._lock:
            self._writable()
            try:
                if wait is not None:
                    self._db.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                finally:
                    if wait is not None:
                        self._db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            except sqlite3.DatabaseError as e:
                raise self._write_error(e) from None
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite rolled back by itself (as after a full disk)
                if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.IntegrityError):
                    raise self._write_error(e) from None
                raise

    def _write_error(self, e: sqlite3.DatabaseError) -> StoreWriteError:
        return write_error(self.path, e)

    def _read(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _touch(self, db: sqlite3.Connection, conversation_id: int) -> float:
        self._claimed(conversation_id)  # every write to a conversation touches it: none goes past this check
        # Strictly later than any other conversation, so "most recent first" holds even within one clock tick.
        latest = db.execute("SELECT MAX(updated) FROM conversations").fetchone()[0] or 0.0
        now = max(time.time(), latest + 1e-6)
        cur = db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        if cur.rowcount == 0:
            raise ConversationNotFoundError(f"no conversation {conversation_id}")
        return now


def _add_functions(db: sqlite3.Connection) -> None:
    db.create_function("casefold", 1, lambda s: s.casefold() if isinstance(s, str) else s, deterministic=True)
