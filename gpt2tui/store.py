"""Conversations kept in SQLite, at `$XDG_DATA_HOME/gpt2tui/chats.db` (default `~/.local/share/gpt2tui/chats.db`).

Every write commits at once, in WAL mode, so a killed process loses nothing that was written: the chat app saves a
reply as it streams (`append_message` with the first text, then `update_last_message`), and at most the text since
its last update is lost.

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
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .atomic import write_new
from .errors import GPT2TUIError

try:
    import fcntl
except ImportError:  # Windows: no per-conversation locks
    fcntl = None

ROLES = ("system", "user", "assistant")
DEFAULT_TITLE = "New chat"


class StoreError(GPT2TUIError, RuntimeError):
    """The chat database cannot be used; the message says why and what to do."""


class StoreWriteError(StoreError):
    """A write was rolled back: `kind` is "busy" (another process holds the database), "full" (no space left),
    "readonly" (the file or its folder cannot be written) or "io"."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class ConversationInUseError(StoreError):
    """Another gpt2tui (another store) holds this conversation: it can be read here, not written."""


class ConversationNotFoundError(StoreError, LookupError):
    """No conversation has this id (it was deleted, or never existed)."""


class ExportFolderMissingError(StoreError):
    """An export's folder does not exist. `folder` names it: the caller asks the user, then exports again with
    `create_folder=True`."""

    def __init__(self, folder: Path):
        super().__init__(f"the folder {folder} does not exist; create it, or export somewhere else")
        self.folder = folder


class DatabaseMovedWarning(UserWarning):
    """An unreadable or locked chat database was moved aside and a new one started."""


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
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v0_to_v1]
SCHEMA_VERSION = len(MIGRATIONS)


# -- records -------------------------------------------------------------------------------------------------------


@dataclass
class Message:
    id: int
    conversation_id: int
    position: int  # 0, 1, 2, ... within the conversation
    role: str
    content: str
    finish_reason: str | None
    created: float  # Unix time

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
    messages: list[Message] = field(default_factory=list)  # filled by `get`, empty in listings


def _conversation(row: sqlite3.Row) -> Conversation:
    try:
        settings = json.loads(row["settings"])
    except (ValueError, RecursionError):
        settings = {}  # a hand-edited row: the conversation still opens, with default settings
    if not isinstance(settings, dict):
        settings = {}
    return Conversation(row["id"], row["title"], row["model"], settings, row["created"], row["updated"])


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- the store -----------------------------------------------------------------------------------------------------


class ChatStore:
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
            raise StoreError(f"cannot make the folder {self.path.parent} for the chat history "
                             f"({e.strerror or e})") from None
        if not self.path.exists():
            self._create()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            if _busy(e):
                self._db = self._open_read_only(e)
                return
            if not _unreadable(e):
                raise StoreError(f"cannot open the chat database {self.path}: {e}") from None
            moved = self._move_aside()
            warnings.warn(
                f"the chat database {self.path} could not be used ({_one_line(e)}); moved it to {moved} "
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
                raise StoreError(f"cannot put the chat database {self.path} in WAL mode (is it on a network drive?)")
            check = db.execute("PRAGMA quick_check").fetchone()[0]  # integrity_check without the slow index checks
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
                raise sqlite3.DatabaseError("database disk image is malformed: a table of the schema is missing")
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self, busy: sqlite3.DatabaseError) -> sqlite3.Connection:
        """The database another process holds, for reading: its history is shown, writes wait for it to be free."""
        uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:  # being made or upgraded by the process that holds it
                db.close()
                raise StoreError(f"the chat history {self.path} is in use by another process ({_one_line(busy)})")
            _add_functions(db)
        except sqlite3.Error as e:
            raise StoreError(f"the chat history {self.path} is in use by another process ({_one_line(e)})") from None
        self.read_only = "the chat history is in use by another process"
        return db

    def _writable(self) -> None:
        """Back to a read-write connection once the process that held the database lets go."""
        if self.read_only is None:
            return
        try:
            db = self._open(timeout=0.1)  # a try on each write; the caller keeps what it meant to write meanwhile
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
        for suffix in ("-wal", "-shm"):  # the journal first: a database never sits beside someone else's journal
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

    # -- one writer per conversation -------------------------------------------------------------------------------

    def _lock_file(self, conversation_id: int) -> Path:
        return self.path.with_name(f"{self.path.name}.locks") / f"conversation-{conversation_id}"

    def claim(self, conversation_id: int) -> bool:
        """Hold the conversation for this store's writes until `release` or `close`; False when another store (in
        this process or another) holds it. Claiming one already held here is a no-op."""
        if self.in_memory or fcntl is None or conversation_id in self._claims:
            return True
        path = self._lock_file(conversation_id)
        try:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return True  # no lock can be taken here (a read-only folder): nothing can be written here either
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._claims[conversation_id] = fd
        return True

    def release(self, conversation_id: int) -> None:
        fd = self._claims.pop(conversation_id, None)
        if fd is not None:
            os.close(fd)  # which drops the flock

    def _claimed(self, conversation_id: int) -> None:
        if not self.claim(conversation_id):
            raise ConversationInUseError(
                f"conversation {conversation_id} is open in another gpt2tui, which writes it; here it is read-only: "
                "start a new conversation to write")

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
        code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
        text = str(e).lower()
        if code == _FULL or "full" in text:
            return StoreWriteError(f"disk full: {self.path} could not be written, your reply is kept until you free "
                                   "space", "full")
        if _busy(e):
            return StoreWriteError(f"the chat history {self.path} is in use by another process; your messages are "
                                   "kept and saved once it is free", "busy")
        if code == _READONLY or "readonly" in text or "read-only" in text:
            return StoreWriteError(f"{self.path} cannot be written (read-only); your messages are kept until you "
                                   "quit", "readonly")
        return StoreWriteError(f"{self.path} could not be written ({_one_line(e)}); your messages are kept until "
                               "you quit", "io")

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

    # -- conversations -------------------------------------------------------------------------------------------

    def create(self, title: str = DEFAULT_TITLE, model: str = "", settings: Mapping[str, Any] | None = None) -> Conversation:
        with self._write() as db:
            now = time.time()
            cur = db.execute(
                "INSERT INTO conversations (title, model, settings, created, updated) VALUES (?, ?, ?, ?, ?)",
                (title, model, json.dumps(dict(settings or {})), now, now),
            )
            self._touch(db, cur.lastrowid)
            row = db.execute("SELECT * FROM conversations WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _conversation(row)

    def conversations(self, limit: int | None = None) -> list[Conversation]:
        """All conversations, without their messages, most recently updated first."""
        sql = "SELECT * FROM conversations ORDER BY updated DESC, id DESC"
        return [_conversation(r) for r in self._read(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())]

    def get(self, conversation_id: int) -> Conversation:
        """One conversation with its messages in order."""
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                raise ConversationNotFoundError(f"no conversation {conversation_id}")
            rows = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY position", (conversation_id,)
            ).fetchall()
        conversation = _conversation(row)
        conversation.messages = [Message(**dict(r)) for r in rows]
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
            db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (json.dumps(dict(settings)), conversation_id))

    def set_model(self, conversation_id: int, model: str) -> None:
        with self._write() as db:
            self._touch(db, conversation_id)
            db.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id))

    # -- messages ------------------------------------------------------------------------------------------------

    def append_message(
        self, conversation_id: int, role: str, content: str, finish_reason: str | None = None
    ) -> Message:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        with self._write() as db:
            self._touch(db, conversation_id)
            position = db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            now = time.time()
            cur = db.execute(
                "INSERT INTO messages (conversation_id, position, role, content, finish_reason, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, position, role, content, finish_reason, now),
            )
        return Message(cur.lastrowid, conversation_id, position, role, content, finish_reason, now)

    def update_last_message(self, conversation_id: int, content: str, finish_reason: str | None = None) -> None:
        """Replace the text (and finish reason) of the conversation's last message: a streaming reply is saved as it
        grows. Raises `ConversationNotFoundError` when there is no such conversation or it has no message."""
        with self._write() as db:
            self._touch(db, conversation_id)
            cur = db.execute(
                "UPDATE messages SET content = ?, finish_reason = ? WHERE conversation_id = ? AND position = "
                "(SELECT MAX(position) FROM messages WHERE conversation_id = ?)",
                (content, finish_reason, conversation_id, conversation_id),
            )
            if cur.rowcount == 0:
                raise ConversationNotFoundError(f"conversation {conversation_id} has no message to update")

    def delete_last_message(self, conversation_id: int) -> Message | None:
        """Remove the last message (a reply about to be regenerated) and return it; None if there was none."""
        with self._write() as db:
            self._touch(db, conversation_id)
            row = db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY position DESC LIMIT 1", (conversation_id,)
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM messages WHERE id = ?", (row["id"],))
        return Message(**dict(row))

    def save_conversation(
        self, conversation_id: int | None, title: str, model: str, settings: Mapping[str, Any], messages: list[dict],
        wait: float | None = None,
    ) -> int:
        """Make the conversation in the database equal to this one, in one transaction, and return its id: what the
        apps call to catch up after writes failed (a full disk, a busy database). `conversation_id` None, or one
        that is gone, makes a new conversation. Messages the database already has, in order, are left as they are;
        from the first that differs on, the database gets these. `wait` as in `_write`."""
        with self._write(wait) as db:
            found = conversation_id is not None and db.execute(
                "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is not None
            if found and not self.claim(conversation_id):
                # Another gpt2tui writes that one now: this one is kept whole as a conversation of its own.
                found, title = False, f"{title} (continued)"
            now = time.time()
            if found:
                db.execute("UPDATE conversations SET title = ?, model = ?, settings = ? WHERE id = ?",
                           (title, model, json.dumps(dict(settings)), conversation_id))
            else:
                conversation_id = db.execute(
                    "INSERT INTO conversations (title, model, settings, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (title, model, json.dumps(dict(settings)), now, now),
                ).lastrowid
            self._touch(db, conversation_id)
            stored = db.execute("SELECT role, content, finish_reason FROM messages WHERE conversation_id = ? "
                                "ORDER BY position", (conversation_id,)).fetchall()
            same = 0
            for row, m in zip(stored, messages, strict=False):
                if (row["role"], row["content"], row["finish_reason"]) != (m["role"], m["content"],
                                                                           m.get("finish_reason")):
                    break
                same += 1
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?", (conversation_id, same))
            db.executemany(
                "INSERT INTO messages (conversation_id, position, role, content, finish_reason, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(conversation_id, i, m["role"], m["content"], m.get("finish_reason"), now)
                 for i, m in enumerate(messages[same:], start=same)],
            )
        return conversation_id

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
        return [_conversation(r) for r in rows]

    def export_markdown(self, conversation_id: int) -> str:
        return to_markdown(self.get(conversation_id))

    def export_markdown_file(
        self, conversation_id: int, path: str | os.PathLike, default_name: str | None = None, create_folder: bool = False
    ) -> Path:
        """Write the conversation as Markdown to a new file at `path`, whole (a temporary file linked into place).

        A `path` that is a folder, or ends with a separator, gets a file named `default_name` in it (by default
        `chat-ID.md`, stepping aside from existing files). An existing file is never replaced, even one another
        process made an instant before: `StoreError` says so. A folder that does not exist raises
        `ExportFolderMissingError` unless `create_folder`: the user is asked first."""
        text = os.fspath(path)
        if "\0" in text:
            raise StoreError("a file name cannot contain a NUL byte; type another path")
        target = Path(text).expanduser()
        if text.endswith((os.sep, os.altsep or os.sep)) or target.is_dir():
            target = free_name(target / (default_name or f"chat-{conversation_id}.md"))
        if not target.parent.is_dir():
            if target.parent.exists():
                raise StoreError(f"{target.parent} is a file, not a folder; export somewhere else")
            if not create_folder:
                raise ExportFolderMissingError(target.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
        markdown = self.export_markdown(conversation_id)
        try:
            return write_new(target, markdown)
        except FileExistsError:
            raise StoreError(f"{target} already exists; export to another path (an export never replaces a file)") \
                from None


_NOTES = {"cancelled": "stopped", "max_tokens": "cut off: max new tokens reached",
          "context_full": "cut off: context window full", "error": "ended by an error"}


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


# SQLite result codes (the low byte of an extended code).
_NOTADB, _CORRUPT, _BUSY, _LOCKED, _FULL, _READONLY = 26, 11, 5, 6, 13, 8


def _unreadable(e: sqlite3.DatabaseError) -> bool:
    """Not a database, or corrupt: the only cases where moving the file aside is the way on. Busy or locked is
    someone else using it, never a reason to move it."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_NOTADB, _CORRUPT)
    message = str(e).lower()
    return "not a database" in message or "malformed" in message


def _busy(e: sqlite3.DatabaseError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_BUSY, _LOCKED)
    message = str(e).lower()
    return "locked" in message or "busy" in message


def _add_functions(db: sqlite3.Connection) -> None:
    db.create_function("casefold", 1, lambda s: s.casefold() if isinstance(s, str) else s, deterministic=True)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:160] or type(e).__name__
