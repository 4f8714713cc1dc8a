"""Where to write the conversation as Markdown: a file in the current directory unless the user types a path."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class ExportScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, default_path: str) -> None:
        super().__init__()
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Export to Markdown", classes="dialog-title")
            yield Input(self.default_path, placeholder="File", id="path")
            yield Static("A relative path is taken from the current directory. Enter writes, Esc cancels.",
                         classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if not path:
            self.notify("Type a file name.", severity="warning")
            return
        self.dismiss(path)
