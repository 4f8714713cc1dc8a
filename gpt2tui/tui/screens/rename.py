"""A new title for the conversation."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class RenameScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.old_title = title

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Rename the conversation", classes="dialog-title")
            yield Input(self.old_title, placeholder="Title", id="title")
            yield Static("Enter saves, Esc cancels.", classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        title = " ".join(event.value.split())
        if not title:
            self.notify("A title cannot be empty.", severity="warning")
            return
        self.dismiss(title)
