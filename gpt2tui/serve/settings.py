"""How the server is run: where it listens, its key and its safety limits (the flags of `gpt2tui serve`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_MAX_BODY = (
    1 << 20
)  # bytes: a window of text is a few kilobytes; a megabyte leaves room for long histories


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()  # none: browsers on other origins may not call the API
    max_body_bytes: int = DEFAULT_MAX_BODY
    shutdown_timeout: float = (
        30.0  # seconds streams in flight get to finish after SIGTERM, then they are cancelled
    )
    # The chat page's conversations (/api/conversations): the chat app's database; None: its default,
    # $XDG_DATA_HOME/gpt2tui/chats.db, so a chat started in the browser continues in the terminal.
    history_path: str | None = None

    @property
    def loopback(self) -> bool:
        host = self.host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def history_enabled(self) -> bool:
        """The conversation-history routes read and write the user's chats: only on a loopback address, or behind a
        key. Reachable by others without a key, the server keeps them off."""
        return self.loopback or self.api_key is not None

    @property
    def exposed_without_key(self) -> bool:
        return not self.loopback and self.api_key is None
