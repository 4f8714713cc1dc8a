"""The conversation list: a search box over the saved conversations, most recently used first."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from ...store import ChatStore


class Sidebar(Vertical):
    class Selected(Message):
        """The user picked a conversation."""

        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.store: ChatStore | None = None
        self.current: int | None = None

    def compose(self) -> ComposeResult:
        yield Static("Conversations", classes="title")
        yield Input(placeholder="Search…", id="search", compact=True)
        yield OptionList(id="conversations", compact=True)

    def refresh_list(self, store: ChatStore | None = None, current: int | None = None) -> None:
        """Reload from the store, keeping the search and marking the open conversation."""
        if store is not None:
            self.store = store
        if current is not None or store is not None:
            self.current = current
        if self.store is None:
            return
        query = self.query_one("#search", Input).value
        found = self.store.search(query) if query.strip() else self.store.conversations()
        options = self.query_one("#conversations", OptionList)
        options.clear_options()
        options.add_options(Option(c.title, id=str(c.id)) for c in found)
        if not found:
            options.add_option(Option("no matches" if query.strip() else "no conversations yet", disabled=True))
        if self.current is not None:
            try:
                options.highlighted = options.get_option_index(str(self.current))
            except Exception:  # the open conversation is filtered out by the search
                options.highlighted = None

    def focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.refresh_list()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        options = self.query_one("#conversations", OptionList)
        if options.highlighted is None and options.option_count:
            options.highlighted = 0  # Enter again opens the best match
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Selected(int(event.option.id)))
