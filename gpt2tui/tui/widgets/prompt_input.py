"""The message box: a TextArea where Enter sends and Shift+Enter / Ctrl+J / Alt+Enter break the line."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

NEWLINE_KEYS = {"shift+enter", "ctrl+j", "alt+enter", "newline"}


class PromptInput(TextArea):
    class Submitted(Message):
        def __init__(self, prompt_input: PromptInput, text: str, pressed_at: float | None = None) -> None:
            super().__init__()
            self.prompt_input = prompt_input
            self.text = text
            # When Enter was pressed (the key event's time): a screen that became ready after it refuses the message.
            self.pressed_at = pressed_at

        @property
        def control(self) -> PromptInput:
            return self.prompt_input

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", compact=True, **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        # TextArea inserts a line break on Enter; here Enter sends, as in every chat app.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text, event.time))
            return
        if event.key in NEWLINE_KEYS or NEWLINE_KEYS.intersection(event.aliases):
            event.stop()
            event.prevent_default()
            self.replace("\n", *self.selection, maintain_selection_offset=False)
            return
        await super()._on_key(event)
