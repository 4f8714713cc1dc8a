"""Import conversations from a JSON file: a gpt2tui export (every branch comes back) or fine-tuning records
(`{"messages": [...]}`, a list or JSON lines). The file is checked whole before anything is written; what is wrong is
said under the path, which stays to be corrected."""

from __future__ import annotations

import os
from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from ...errors import GPT2TUIError

# Imports a file: (path typed) -> the ids of the conversations added. Raises an error whose message says what is wrong.
Importer = Callable[[str], list[int]]


class ImportScreen(ModalScreen[list[int] | None]):
    """Dismissed with the new conversations' ids, or None when cancelled."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, import_file: Importer) -> None:
        super().__init__()
        self.import_file = import_file

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Import conversations", classes="dialog-title")
            yield Input(placeholder="A .json or .jsonl file", id="path")
            yield Static("", id="error", markup=False)
            yield Static(
                "A gpt2tui export (Ctrl+O, JSON: its branches come back), or fine-tuning records: a JSON list, or JSON "
                'lines, of {"messages": [{"role", "content"}, ...]}. The whole file is checked first and imported in '
                f"one piece, or not at all. A relative path starts from {os.getcwd()}. Enter imports, Esc cancels.",
                classes="dialog-hint",
                markup=False,
            )

    def on_mount(self) -> None:
        self.query_one("#error", Static).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        error = self.query_one("#error", Static)
        if not path:
            error.update("Type the path of the file to import.")
            error.display = True
            return
        try:
            ids = self.import_file(os.path.join(os.getcwd(), os.path.expanduser(path)))
        except (
            GPT2TUIError
        ) as e:  # one line from the format's checks or the store: the path stays to be fixed
            error.update(f"Not imported: {e}")
            error.display = True
            return
        self.dismiss(ids)
