"""Every key of the app, from the one key table."""

from __future__ import annotations

import os

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from ..keys import APP_KEYS, CHAT_KEYS, INPUT_KEYS, MESSAGE_KEYS, newline_note


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Keys", classes="dialog-title")
            yield Static(newline_note(os.environ), id="terminal", markup=False)
            yield DataTable(cursor_type="none", zebra_stripes=True, show_header=False)
            yield Static(
                "Chats are saved as you go in $XDG_DATA_HOME/gpt2tui/chats.db. Copying uses the terminal's clipboard "
                "(OSC 52): in tmux, `set -g set-clipboard on`.  ↑/↓ scroll, Esc, F1 or q closes this.",
                classes="dialog-hint",
                markup=False,
            )

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()  # its arrows and page keys scroll what does not fit

    def on_resize(self) -> None:
        self._fill(self.query_one(DataTable).scrollable_content_region.width)

    def _fill(self, width: int) -> None:
        """The table at this width: descriptions wrap in what the keys leave, so none is cut at 80 columns."""
        table = self.query_one(DataTable)
        table.clear(columns=True)
        sections = (("Message box", INPUT_KEYS), ("Chat", CHAT_KEYS), ("A selected message", MESSAGE_KEYS),
                    ("App", APP_KEYS))
        key_column = max(len(text) for section, keys in sections for text in (section, *(k.label for k in keys)))
        table.add_column("key", width=key_column)
        # Two cells of padding each side of each column, and a cell for the scroll bar.
        table.add_column("what it does", width=max(20, width - key_column - 6))
        for section, keys in sections:
            table.add_row(f"[b]{section}[/b]", "")
            for key in keys:
                table.add_row(key.label, key.description, height=None)
