"""The chat screen's conversations: opening one, starting a new one, renaming and deleting, and saving what the
database refused (a full disk, a database another process holds) once it can be written again.

A conversation on screen that is not all saved (`unsaved` says why) stays open: leaving it would lose it.
"""

from __future__ import annotations

from textual.widgets import Static

from ...store import DEFAULT_TITLE, ConversationNotFoundError, StoreError, StoreWriteError
from ..widgets import MessageList, PromptInput, Sidebar, StatusBar
from .chat_branches import shown_messages
from .confirm import ConfirmScreen
from .rename import RenameScreen

TITLE_LENGTH = 48


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


class ConversationActions:
    """Mixed into `ChatScreen`, whose store, session and reply these use."""

    def _can_change(self, doing: str) -> bool:
        if self.reply is not None:
            self.notify(f"A reply is streaming: Esc stops it, then {doing}.", severity="warning")
            return False
        return True

    def _can_leave(self) -> bool:
        """Whether another conversation may take the screen: not while this one is only partly saved."""
        if self.catch_up():
            return True
        self.notify(
            f"This conversation is not saved yet ({self.unsaved}). It stays open until it can be written; "
            "quitting leaves without it.",
            severity="warning",
            timeout=15,
        )
        return False

    # -- saving when the database cannot be written ------------------------------------------------------------

    def _not_saved(self, e: StoreWriteError) -> None:
        if self.unsaved != str(e):
            self.notify(
                str(e)[0].upper() + str(e)[1:] + ".", title="Not saved", severity="warning", timeout=15
            )
        self.unsaved = str(e)

    def catch_up(self) -> bool:
        """Write the conversation in memory to the database, whole; True once nothing is left unsaved."""
        if self._save_failure is not None and (self.worker is None or not self.worker.is_running):
            # The reply's worker ended: its failure is the screen's now.
            self.unsaved, self._save_failure = str(self._save_failure), None
        if self.unsaved is None:
            return True
        if self.session is None or (self.worker is not None and self.worker.is_running):
            return False
        messages = self.session.messages
        title = self.conversation_title
        if self.conversation_id is None and title == DEFAULT_TITLE:
            title = title_from(next((m["content"] for m in messages if m["role"] == "user"), DEFAULT_TITLE))
        try:
            self.conversation_id = self.store.save_conversation(
                self.conversation_id, title, self.session.model_name, self.settings, messages, wait=0.2
            )
        except StoreError:
            return False
        self.unsaved = None
        self.conversation_title = title
        self.query_one("#chat-title", Static).update(title)
        self.query_one(Sidebar).refresh_list(self.store, self.conversation_id)
        self.refresh_branches()
        self.notify("Saved: the chat history could be written again.", title="Saved")
        return True

    # -- conversations -----------------------------------------------------------------------------------------

    async def open_conversation(self, conversation_id: int) -> None:
        if not self._can_change("open the conversation"):
            return
        if conversation_id != self.conversation_id and not self._can_leave():
            return
        try:
            conversation = self.store.get(conversation_id)
        except ConversationNotFoundError:
            self.notify("That conversation is gone.", severity="warning")
            self.query_one(Sidebar).refresh_list(self.store, self.conversation_id)
            return
        if self.conversation_id is not None and self.conversation_id != conversation.id:
            self.store.release(self.conversation_id)
        if not self.store.claim(conversation.id):
            self.notify(
                f"“{conversation.title}” is open in another gpt2tui, which writes it: here it is read-only. "
                "Start a new conversation (Ctrl+N) to write.",
                title="Read-only",
                severity="warning",
                timeout=15,
            )
        self.conversation_id = conversation.id
        # Precedence: the flags, the conversation's own settings, config.toml, the built-in defaults.
        self.settings = (
            {**conversation.settings, **self.overrides} if conversation.settings else dict(self.defaults)
        )
        self._check_conversation_model(conversation.model)
        messages = shown_messages(conversation)
        await self._show(conversation.title, messages)

    async def new_chat(self) -> None:
        if not self._can_change("start a new one") or not self._can_leave():
            return
        if self.conversation_id is not None:
            self.store.release(self.conversation_id)
        self.conversation_id = None
        self.settings = dict(self.defaults)
        self.conversation_model = ""
        await self._show(DEFAULT_TITLE, [])

    async def _show(self, title: str, messages: list[dict]) -> None:
        self.conversation_title = title
        self.warned_near_full = None
        self.query_one("#chat-title", Static).update(title)
        empty = (
            "Type a message below and press Enter."
            if self.session or not self.model_failed
            else "No model is loaded: this conversation can be read and exported, not continued."
        )
        await self.query_one(MessageList).show(messages, self.model_name, empty)
        self.query_one(Sidebar).refresh_list(self.store, self.conversation_id)
        status = self.query_one(StatusBar)
        status.tokens_per_s = None
        status.context_used = None
        self._apply_to_session()

    def _save_new_conversation(self, first_message: str) -> int:
        if self.conversation_id is None:
            title = (
                self.conversation_title
                if self.conversation_title != DEFAULT_TITLE
                else title_from(first_message)
            )
            conversation = self.store.create(title, model=self.session.model_name, settings=self.settings)
            self.conversation_id = conversation.id
            self.conversation_title = conversation.title
            self.query_one("#chat-title", Static).update(conversation.title)
        return self.conversation_id

    # -- actions on conversations ------------------------------------------------------------------------------

    async def action_new_chat(self) -> None:
        await self.new_chat()
        self.query_one(PromptInput).focus()

    def action_search(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = True
        sidebar.focus_search()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = not sidebar.display
        self.post_message(self.SidebarShown(sidebar.display))

    def action_rename(self) -> None:
        def renamed(title: str | None) -> None:
            if not title:
                return
            if self.conversation_id is not None and self.unsaved is None:
                try:
                    self.store.rename(self.conversation_id, title)
                except StoreWriteError as e:
                    self._not_saved(e)
            self.conversation_title = title  # a new conversation is saved under it with its first message
            self.query_one("#chat-title", Static).update(title)
            self.query_one(Sidebar).refresh_list()

        self.app.push_screen(RenameScreen(self.conversation_title), renamed)

    def action_delete(self) -> None:
        if self.conversation_id is None:
            self.notify("This conversation is not saved yet: there is nothing to delete.")
            return
        if not self._can_change("delete"):
            return
        conversation_id, title = self.conversation_id, self.conversation_title

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.store.delete(conversation_id)
            except ConversationNotFoundError:
                pass
            except StoreError as e:
                self.notify(f"Not deleted: {e}", severity="error")
                return
            self.notify(f"Deleted “{title}”.")
            latest = self.store.conversations(limit=1)
            if latest:
                await self.open_conversation(latest[0].id)
            else:
                await self.new_chat()

        self.app.push_screen(ConfirmScreen(f"Delete “{title}”? This cannot be undone."), answered)
