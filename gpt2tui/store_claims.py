"""One writer per conversation: two processes on one conversation would interleave their messages and overwrite each
other's replies, so a store writes a conversation only once it holds a per-conversation lock (`flock` on a file in
`chats.db.locks/`), which the operating system drops when the store closes it or its process dies."""

from __future__ import annotations

import os
from pathlib import Path

from .store_errors import ConversationInUseError

try:
    import fcntl
except ImportError:  # Windows: no per-conversation locks
    fcntl = None


class ConversationClaims:
    """Mixed into `ChatStore`, whose `path`, `in_memory` and `_claims` (conversation id -> the file descriptor whose
    flock holds it) these use."""

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
                "start a new conversation to write"
            )
