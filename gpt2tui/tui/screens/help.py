"""Every key of the app, from the one key table."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from ..keys import APP_KEYS, CHAT_KEYS, INPUT_KEYS


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Keys", classes="dialog-title")
            table: DataTable = DataTable(cursor_type="none", zebra_stripes=True, show_header=False)
            table.add_columns("key", "what it does")
            for section, keys in (("Message box", INPUT_KEYS), ("Chat", CHAT_KEYS), ("App", APP_KEYS)):
                table.add_row(f"[b]{section}[/b]", "")
                for key in keys:
                    table.add_row(key.label, key.description)
            yield table
            yield Static(
                "Chats are saved as you go in $XDG_DATA_HOME/gpt2tui/chats.db. Copying uses the terminal's clipboard "
                "(OSC 52): in tmux, `set -g set-clipboard on`.  Esc, F1 or q closes this.",
                classes="dialog-hint",
                markup=False,
            )
