"""The conversation: a scrolling column of messages that follows a streaming reply unless the user scrolls up."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from .message import MessageView


class MessageList(VerticalScroll, can_focus=True):
    def on_mount(self) -> None:
        self.anchor()

    async def show(self, messages: list[dict], author: str, empty_text: str) -> None:
        """Replace the contents with a whole conversation (`gpt2tui.chat` message dicts)."""
        with self.app.batch_update():
            await self.remove_children()
            if not messages:
                await self.mount(Static(empty_text, classes="empty", markup=False))
            else:
                await self.mount_all(
                    MessageView(m["role"], m["content"], m.get("finish_reason"), author if m["role"] == "assistant" else "")
                    for m in messages
                )
        self.anchor()

    async def add(self, view: MessageView) -> MessageView:
        for placeholder in self.query(".empty"):
            await placeholder.remove()
        await self.mount(view)
        self.anchor()
        return view

    @property
    def views(self) -> list[MessageView]:
        return list(self.query(MessageView))
