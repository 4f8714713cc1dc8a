"""The main screen: the conversation list, the conversation, the message box, and the status line.

A reply streams from a thread worker: it iterates the session's `ReplyStream` and posts each delta to this screen,
which appends it to the reply's Markdown. The worker also saves the reply as it grows (at most every
`SAVE_INTERVAL` seconds, and once more with its finish reason), so a killed process loses at most that much text.
Esc asks the session to stop; the model checks between tokens, so the worker's loop ends after the token in flight.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker

from ...chat import ChatError
from ...store import (
    DEFAULT_TITLE,
    ChatStore,
    ConversationNotFoundError,
    ExportFolderMissingError,
    StoreError,
    StoreWriteError,
    free_name,
)
from ..commands import ChatCommands
from ..keys import CHAT_KEYS, bindings
from ..widgets import MessageList, MessageView, PromptInput, Sidebar, StatusBar
from .confirm import ConfirmScreen
from .export import ExportScreen
from .rename import RenameScreen
from .settings import SettingsScreen

if TYPE_CHECKING:
    from ...chat import Prompt
    from ...session import ChatSession, ReplyStream

SAVE_INTERVAL = 0.5  # seconds between saves of a streaming reply
RETRY_SAVE_INTERVAL = 5.0  # seconds between tries to write a conversation the database refused
# Deltas reach the screen at most this often, joined. Each redraw of the growing reply holds the GIL, and the
# model's thread needs it between its ops: per-token redraws cost more than half the decoding speed of a small model.
SHOW_INTERVAL = 0.05
TITLE_LENGTH = 48


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def context_notice(prompt: Prompt, window: int) -> str:
    """What the context policy left out of this reply's prompt, in words; "" when nothing was."""
    notes = []
    if prompt.turns_dropped:
        turns = "turn" if prompt.turns_dropped == 1 else "turns"
        notes.append(f"the {prompt.turns_dropped} oldest {turns} no longer fit the {window}-token window and were left out")
    if prompt.cut_tokens:
        notes.append(f"your message was too long: its first {prompt.cut_tokens} tokens were cut")
    return "; ".join(notes)


class ChatScreen(Screen):
    BINDINGS = bindings(CHAT_KEYS)
    COMMANDS = {ChatCommands}
    AUTO_FOCUS = "#prompt"

    class ReplyDelta(Message, bubble=False):
        def __init__(self, reply: ReplyStream, text: str) -> None:
            super().__init__()
            self.reply = reply
            self.text = text

    class ReplyEnded(Message, bubble=False):
        def __init__(self, reply: ReplyStream, error: str | None) -> None:
            super().__init__()
            self.reply = reply
            self.error = error

    def __init__(self, store: ChatStore, defaults: dict, model_name: str) -> None:
        super().__init__()
        self.store = store
        self.defaults = dict(defaults)  # the settings a new conversation starts with
        self.model_name = model_name
        self.session: ChatSession | None = None
        self.model_failed = False
        self.conversation_id: int | None = None  # None: a new conversation, saved with its first message
        self.conversation_title = DEFAULT_TITLE
        self.settings: dict = dict(defaults)
        self.reply: ReplyStream | None = None
        self.reply_view: MessageView | None = None
        self.worker: Worker | None = None
        # Why the conversation on screen is not all in the database (a full disk, a database another process holds),
        # or None. It is kept in memory and written whole once a write goes through again (`catch_up`).
        self.unsaved: str | None = None
        self._save_failure: StoreWriteError | None = None  # set by the reply's worker, taken by the UI thread

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                yield Static(id="chat-title", markup=False)
                yield MessageList(id="messages")
                yield PromptInput(id="prompt", placeholder="Message  (Enter sends · Ctrl+J new line · F1 keys)")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.set_interval(RETRY_SAVE_INTERVAL, self.catch_up)
        status = self.query_one(StatusBar)
        status.model = self.model_name
        status.loading = True
        status.state = f"Loading {self.model_name}…"
        latest = self.store.conversations(limit=1)
        if latest:
            await self.open_conversation(latest[0].id)
        else:
            await self.new_chat()

    # -- the model ---------------------------------------------------------------------------------------------

    def session_ready(self, session: ChatSession) -> None:
        self.session = session
        info = session.info()
        status = self.query_one(StatusBar)
        status.loading = False
        status.device = info["device"]
        status.attention = info["attention"]
        status.context_window = info["context_length"]
        status.state = "Ready"
        self._apply_to_session()

    def session_failed(self) -> None:
        self.model_failed = True
        status = self.query_one(StatusBar)
        status.loading = False
        status.state = "No model"

    def _apply_to_session(self) -> None:
        """Give the session the open conversation and its settings."""
        if self.session is None:
            return
        from ...session import ChatSettings  # deferred: imports torch; the app draws before torch loads

        try:
            self.session.settings = ChatSettings.from_dict(self.settings)
        except (ChatError, TypeError) as e:
            self.notify(f"This conversation's saved settings are not usable ({e}); the defaults apply.",
                        severity="warning")
            self.session.settings = ChatSettings()
        messages = [{"role": v.role, "content": v.content} for v in self.query_one(MessageList).views]
        try:
            self.session.set_messages(messages)
        except ChatError as e:
            self.notify(f"This conversation cannot be continued ({e}); start a new one with Ctrl+N.",
                        severity="error")
            self.session.set_messages([])
        self._show_context_estimate()

    def _show_context_estimate(self) -> None:
        session = self.session
        if session is None:
            return
        text = session.template.render(session.conversation())
        self.query_one(StatusBar).context_used = len(session.tokenizer.encode_ordinary(text))

    def _can_change(self, doing: str) -> bool:
        if self.reply is not None:
            self.notify(f"A reply is streaming: Esc stops it, then {doing}.", severity="warning")
            return False
        return True

    def _can_leave(self) -> bool:
        """Whether another conversation may take the screen: not while this one is only partly saved."""
        if self.catch_up():
            return True
        self.notify(f"This conversation is not saved yet ({self.unsaved}). It stays open until it can be written; "
                    "quitting leaves without it.", severity="warning", timeout=15)
        return False

    # -- saving when the database cannot be written ------------------------------------------------------------

    def _not_saved(self, e: StoreWriteError) -> None:
        if self.unsaved != str(e):
            self.notify(str(e)[0].upper() + str(e)[1:] + ".", title="Not saved", severity="warning", timeout=15)
        self.unsaved = str(e)

    def catch_up(self) -> bool:
        """Write the conversation in memory to the database, whole; True once nothing is left unsaved."""
        if self._save_failure is not None and (self.worker is None or not self.worker.is_running):
            self.unsaved, self._save_failure = str(self._save_failure), None  # the reply's worker ended: its turn
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
                self.conversation_id, title, self.session.model_name, self.settings, messages, wait=0.2)
        except StoreError:
            return False
        self.unsaved = None
        self.conversation_title = title
        self.query_one("#chat-title", Static).update(title)
        self.query_one(Sidebar).refresh_list(self.store, self.conversation_id)
        self.notify("Saved: the chat history could be written again.", title="Saved")
        return True

    # -- conversations ------------------------------------------------------------------------------------------

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
            self.notify(f"“{conversation.title}” is open in another gpt2tui, which writes it: here it is read-only. "
                        "Start a new conversation (Ctrl+N) to write.", title="Read-only", severity="warning",
                        timeout=15)
        self.conversation_id = conversation.id
        self.settings = conversation.settings or dict(self.defaults)
        messages = []
        for m in conversation.messages:
            if m.role == "system":
                continue
            message = m.to_chat()
            if m.role == "assistant" and m.finish_reason is None:
                message["finish_reason"] = "cancelled"  # the app was killed while it streamed
            messages.append(message)
        await self._show(conversation.title, messages)

    async def new_chat(self) -> None:
        if not self._can_change("start a new one") or not self._can_leave():
            return
        if self.conversation_id is not None:
            self.store.release(self.conversation_id)
        self.conversation_id = None
        self.settings = dict(self.defaults)
        await self._show(DEFAULT_TITLE, [])

    async def _show(self, title: str, messages: list[dict]) -> None:
        self.conversation_title = title
        self.query_one("#chat-title", Static).update(title)
        empty = "Type a message below and press Enter." if self.session or not self.model_failed else (
            "No model is loaded: this conversation can be read and exported, not continued.")
        await self.query_one(MessageList).show(messages, self.model_name, empty)
        self.query_one(Sidebar).refresh_list(self.store, self.conversation_id)
        status = self.query_one(StatusBar)
        status.tokens_per_s = None
        status.context_used = None
        self._apply_to_session()

    def _save_new_conversation(self, first_message: str) -> int:
        if self.conversation_id is None:
            title = self.conversation_title if self.conversation_title != DEFAULT_TITLE else title_from(first_message)
            conversation = self.store.create(title, model=self.session.model_name, settings=self.settings)
            self.conversation_id = conversation.id
            self.conversation_title = conversation.title
            self.query_one("#chat-title", Static).update(conversation.title)
        return self.conversation_id

    @on(Sidebar.Selected)
    async def _selected(self, event: Sidebar.Selected) -> None:
        await self.open_conversation(event.conversation_id)
        self.query_one(PromptInput).focus()

    # -- sending and streaming ----------------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return  # an empty message is not sent
        if self.session is None:
            self.notify("No model is loaded." if self.model_failed else "The model is still loading…",
                        severity="warning")
            return
        if not self._can_change("send the next message"):
            return
        dangling = (self.session.messages or [{}])[-1].get("role") == "user"
        try:
            reply = self.session.reply(text)
        except ChatError as e:
            self.notify(str(e), severity="error")
            return
        event.prompt_input.clear()
        conversation_id = self.conversation_id
        if self.unsaved is None:
            try:
                conversation_id = self._save_new_conversation(text)
                if dangling:  # the session records a reply that never came; so does the store: the turns alternate
                    self.store.append_message(conversation_id, "assistant", "", "cancelled")
                self.store.append_message(conversation_id, "user", text)
                self.store.append_message(conversation_id, "assistant", "")
            except StoreWriteError as e:
                self._not_saved(e)  # the reply goes on; the conversation is kept in memory
            except StoreError as e:
                reply.close()
                self.notify(f"The message could not be saved: {e}", severity="error")
                if self.conversation_id is not None:
                    await self.open_conversation(self.conversation_id)
                return
        messages = self.query_one(MessageList)
        await messages.add(MessageView("user", text))
        self.query_one(Sidebar).refresh_list(self.store, conversation_id)
        await self._stream(reply, conversation_id)

    async def _stream(self, reply: ReplyStream, conversation_id: int) -> None:
        view = await self.query_one(MessageList).add(MessageView("assistant", author=self.model_name))
        view.start_stream()
        notice = context_notice(reply.prompt, self.session.context_length)
        if notice:
            view.set_notice(notice)
            self.notify(notice[0].upper() + notice[1:] + ".", title="Context window", severity="warning")
        self.reply, self.reply_view = reply, view
        self.query_one(StatusBar).state = "Generating… (Esc stops)"
        self.worker = self.run_worker(
            lambda: self._run_reply(reply, conversation_id), name="reply", group="reply", thread=True,
            exit_on_error=False,
        )

    def _run_reply(self, reply: ReplyStream, conversation_id: int) -> None:
        """In the worker thread: generate, hand each delta to the UI, save as the reply grows."""
        error: str | None = None
        saved_at = shown_at = time.monotonic()
        pending = ""
        try:
            for delta in reply:
                pending += delta
                if time.monotonic() - shown_at >= SHOW_INTERVAL:
                    self.post_message(self.ReplyDelta(reply, pending))
                    pending, shown_at = "", time.monotonic()
                if time.monotonic() - saved_at >= SAVE_INTERVAL and self.unsaved is None and \
                        self._save_failure is None:
                    saved_at = time.monotonic()
                    try:
                        self.store.update_last_message(conversation_id, reply.text)
                    except StoreWriteError as e:  # keep generating; the UI thread writes it all later
                        self._save_failure = e
                    except StoreError as e:  # keep generating; the final save below tries again
                        error = str(e)
        except Exception as e:  # the model failed mid-reply; the stream recorded it as "error"
            error = f"{type(e).__name__}: {e}"
        finally:
            reply.close()  # a no-op once it ended; otherwise it is recorded as stopped and the session is free
            if pending:
                self.post_message(self.ReplyDelta(reply, pending))
            if self.unsaved is None and self._save_failure is None:
                try:
                    self.store.update_last_message(conversation_id, reply.text, reply.finish_reason)
                except StoreWriteError as e:
                    self._save_failure = e
                except StoreError as e:
                    error = error or str(e)
            self.post_message(self.ReplyEnded(reply, error))

    @on(ReplyDelta)
    async def _delta(self, event: ReplyDelta) -> None:
        if event.reply is self.reply and self.reply_view is not None:
            await self.reply_view.append(event.text)

    @on(ReplyEnded)
    async def _ended(self, event: ReplyEnded) -> None:
        reply = event.reply
        if self.reply_view is not None:
            await self.reply_view.finish(reply.finish_reason)
        self.reply = self.reply_view = self.worker = None
        if self._save_failure is not None:
            self._not_saved(self._save_failure)
            self._save_failure = None
        elif self.unsaved is not None:
            self.catch_up()
        stats = reply.stats
        status = self.query_one(StatusBar)
        if stats is not None:
            status.tokens_per_s = stats.tokens_per_s
            status.context_used = stats.context_used
        status.state = {"cancelled": "Stopped", "error": "Error"}.get(reply.finish_reason or "", "Ready")
        if event.error:
            self.notify(event.error, title="Generation failed", severity="error", timeout=15)
        elif reply.finish_reason == "context_full":
            self.notify("The context window is full: start a new conversation (Ctrl+N) or lower max new tokens.",
                        severity="warning")
        self.query_one(Sidebar).refresh_list()

    # -- actions (keys.py binds them; the command palette offers them) ------------------------------------------

    def action_stop(self) -> None:
        if self.reply is not None and self.session is not None:
            self.session.cancel()
            self.query_one(StatusBar).state = "Stopping…"
        else:
            self.query_one(PromptInput).focus()

    async def action_regenerate(self) -> None:
        if self.session is None or self.conversation_id is None:
            self.notify("There is no reply to regenerate yet.", severity="warning")
            return
        if not self._can_change("regenerate"):
            return
        had_reply = (self.session.messages or [{}])[-1].get("role") == "assistant"
        try:
            reply = self.session.regenerate()
        except ChatError as e:
            self.notify(str(e), severity="warning")
            return
        try:
            if self.unsaved is None and self.conversation_id is not None:
                if had_reply:
                    self.store.delete_last_message(self.conversation_id)
                self.store.append_message(self.conversation_id, "assistant", "")
        except StoreWriteError as e:
            self._not_saved(e)
        except StoreError as e:
            reply.close()
            self.notify(f"The reply could not be saved: {e}", severity="error")
            await self.open_conversation(self.conversation_id)
            return
        views = self.query_one(MessageList).views
        if had_reply and views and views[-1].role == "assistant":
            await views[-1].remove()
        await self._stream(reply, self.conversation_id)

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

    def action_export(self) -> None:
        if self.conversation_id is None:
            self.notify("This conversation is empty: there is nothing to export yet.")
            return
        conversation_id = self.conversation_id
        slug = re.sub(r"[^\w-]+", "-", self.conversation_title.lower()).strip("-")[:40] or "chat"
        name = f"{slug}-{conversation_id}.md"  # in a folder the user names, it steps aside there
        default = str(free_name(name))

        def write(target: str, create_folder: bool = False) -> None:
            try:
                written = self.store.export_markdown_file(conversation_id, target, default_name=name,
                                                          create_folder=create_folder)
            except ExportFolderMissingError as e:
                folder = e.folder

                def answered(yes: bool | None) -> None:
                    if yes:
                        write(target, create_folder=True)
                    else:
                        self.notify(f"Not exported: {folder} does not exist.", severity="warning")

                self.app.push_screen(ConfirmScreen(f"{folder} does not exist. Create it and export there?",
                                                   yes="Create"), answered)
                return
            except (OSError, StoreError) as e:
                self.notify(f"Could not write {target}: {e}", severity="error")
                return
            self.notify(f"Exported to {written}", title="Export")

        def chosen(path: str | None) -> None:
            if path:
                # A string, not a Path, so that `dir/` keeps the separator that says "into this folder".
                write(os.path.join(os.getcwd(), os.path.expanduser(path)))

        self.app.push_screen(ExportScreen(default), chosen)

    def action_copy_reply(self) -> None:
        replies = [v for v in self.query_one(MessageList).views if v.role == "assistant" and v is not self.reply_view]
        text = replies[-1].content if replies else ""
        if not text:
            self.notify("There is no reply to copy yet.")
            return
        self.app.copy_to_clipboard(text)
        self.notify(f"Copied the last reply ({len(text)} characters) to the clipboard.")

    def action_settings(self) -> None:
        from ...session import ChatSettings  # deferred: imports torch; the app draws before torch loads

        try:
            current = ChatSettings.from_dict(self.settings).to_dict()
        except (ChatError, TypeError):
            current = ChatSettings().to_dict()

        def saved(settings: dict | None) -> None:
            if settings is None:
                return
            self.settings = settings
            if self.conversation_id is not None and self.unsaved is None:
                try:
                    self.store.save_settings(self.conversation_id, settings)
                except StoreWriteError as e:
                    self._not_saved(e)
            if self.session is not None:
                self.session.settings = ChatSettings.from_dict(settings)
            self.notify("Settings saved: the next reply uses them.")

        self.app.push_screen(SettingsScreen(current, self.conversation_title), saved)
