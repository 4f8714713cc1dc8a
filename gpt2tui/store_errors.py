"""What the chat store raises and warns, and how an SQLite error is told apart: a damaged file (moved aside), a busy
one (waited for, or opened read-only), or a write that cannot be made (`StoreWriteError`, whose `kind` says which).
`gpt2tui.store` re-exports every name here."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .errors import GPT2TUIError


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


# SQLite result codes (the low byte of an extended code).
_NOTADB, _CORRUPT, _BUSY, _LOCKED, _FULL, _READONLY = 26, 11, 5, 6, 13, 8


def is_unreadable(e: sqlite3.DatabaseError) -> bool:
    """Not a database, or corrupt: the only cases where moving the file aside is the way on. Busy or locked is
    someone else using it, never a reason to move it."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_NOTADB, _CORRUPT)
    message = str(e).lower()
    return "not a database" in message or "malformed" in message


def is_busy(e: sqlite3.DatabaseError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_BUSY, _LOCKED)
    message = str(e).lower()
    return "locked" in message or "busy" in message


def write_error(path: Path, e: sqlite3.DatabaseError) -> StoreWriteError:
    """The error a rolled-back write of the database at `path` raises: what happened, and that nothing is lost."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(e).lower()
    if code == _FULL or "full" in text:
        return StoreWriteError(
            f"disk full: {path} could not be written, your reply is kept until you free space",
            "full",
        )
    if is_busy(e):
        return StoreWriteError(
            f"the chat history {path} is in use by another process; your messages are kept and saved once it is free",
            "busy",
        )
    if code == _READONLY or "readonly" in text or "read-only" in text:
        return StoreWriteError(
            f"{path} cannot be written (read-only); your messages are kept until you quit",
            "readonly",
        )
    return StoreWriteError(
        f"{path} could not be written ({one_line(e)}); your messages are kept until you quit", "io"
    )


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:160] or type(e).__name__
