"""The Textual chat app (`gpt2tui` in a terminal). It talks to a `gpt2tui.session.ChatSession` and a
`gpt2tui.store.ChatStore`; it never touches tensors."""

from .app import ChatApp

__all__ = ["ChatApp"]
