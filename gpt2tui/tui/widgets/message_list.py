"""The conversation: a scrolling column of messages that follows a streaming reply unless the user scrolls up.

Focused (Shift+Tab from the message box, or a click), it selects one message: ↑/↓ move the selection, and the chat
screen's keys act on the selected message (edit it, flip through its alternatives)."""

from __future__ import annotations

from textual import events
from textual.containers import VerticalScroll
from textual.widgets import Static

from ..keys import MESSAGE_KEYS, bindings
from .message import MessageView


class MessageList(VerticalScroll, can_focus=True):
    # Replace the scroll keys of the same names: here ↑/↓ move between messages and ←/→ between alternatives.
    BINDINGS = bindings(MESSAGE_KEYS)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._selected: MessageView | None = None

    def on_mount(self) -> None:
        self.anchor()

    @property
    def selected(self) -> MessageView | None:
        """The selected message, if it is still shown."""
        if self._selected is not None and self._selected.parent is self:
            return self._selected
        return None

    def select(self, index: int) -> MessageView | None:
        """Select the message at `index` (clamped; negative counts from the end)."""
        views = self.views
        if not views:
            return None
        view = views[max(0, min(index if index >= 0 else len(views) + index, len(views) - 1))]
        if self._selected is not None:
            self._selected.remove_class("selected")
        self._selected = view
        view.add_class("selected")
        self.release_anchor()  # looking back through the conversation: it no longer follows the end
        self.scroll_to_widget(view, animate=False)
        return view

    def action_select_message(self, step: int) -> None:
        current = self.selected
        self.select(self.views.index(current) + step if current is not None else -1)

    def on_focus(self) -> None:
        if self.selected is None:
            self.select(-1)

    def on_click(self, event: events.Click) -> None:
        widget = event.widget
        while widget is not None and not isinstance(widget, MessageView):
            widget = widget.parent
        if widget is not None and widget.parent is self:
            self.select(self.views.index(widget))
            self.focus()

    async def show(self, messages: list[dict], author: str, empty_text: str) -> None:
        """Replace the contents with a whole conversation (`gpt2tui.chat` message dicts)."""
        with self.app.batch_update():
            await self.remove_children()
            if not messages:
                await self.mount(Static(empty_text, classes="empty", markup=False))
            else:
                await self.mount_all(
                    MessageView(m["role"], m["content"], m.get("finish_reason"),
                                author if m["role"] == "assistant" else "", m.get("id"), m.get("branch"))
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
