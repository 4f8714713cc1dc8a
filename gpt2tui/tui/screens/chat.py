"""The main screen: the conversation list, the conversation, the message box, and the status line.

A reply streams from a thread worker: it iterates the session's `ReplyStream` and posts each delta to this screen,
which appends it to the reply's Markdown. The worker also saves the reply as it grows (at most every
`SAVE_INTERVAL` seconds, and once more with its finish reason), so a killed process loses at most that much text.
Esc asks the session to stop; the model checks between tokens, so the worker's loop ends after the token in flight.

This module holds the screen, sending and streaming. The rest of `ChatScreen` is mixed in from the modules beside
it: `chat_model` (loading and switching the model, settings), `chat_numbers` (token counts and the context window),
`chat_conversations` (opening, starting, renaming, deleting, and saving what the database refused),
`chat_branches` (edit, regenerate, switch branches), `chat_copy` and `chat_transfer` (export and import). Message
handlers (`@on`) stay on the screen itself: Textual collects them from the class that defines them, not from a
plain mixin.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker

from ...chat import ChatError, turns_left_out
from ...store import DEFAULT_TITLE, ChatStore, StoreError, StoreWriteError
from ..commands import ChatCommands
from ..keys import CHAT_KEYS, bindings
from ..numbers import message_numbers
from ..widgets import MessageList, MessageView, PromptInput, Sidebar, StatusBar
from .chat_branches import BranchActions
from .chat_conversations import ConversationActions
from .chat_copy import CopyActions
from .chat_model import ModelActions
from .chat_numbers import LiveNumbers
from .chat_transfer import TransferActions

if TYPE_CHECKING:
    from ...chat import Prompt
    from ...session import ChatSession, ReplyStream

SAVE_INTERVAL = 0.5  # seconds between saves of a streaming reply
RETRY_SAVE_INTERVAL = 5.0  # seconds between tries to write a conversation the database refused
# Deltas reach the screen at most this often, joined. Each redraw of the growing reply holds the GIL, and the
# model's thread needs it between its ops: per-token redraws cost more than half the decoding speed of a small model.
SHOW_INTERVAL = 0.05


def context_notice(prompt: Prompt, window: int) -> str:
    """What the context policy left out of this reply's prompt, in words; "" when nothing was."""
    notes = []
    if prompt.turns_dropped:
        notes.append(f"{turns_left_out(prompt.turns_dropped)} to fit the {window}-token window")
    if prompt.cut_tokens:
        notes.append(f"your message was too long: its first {prompt.cut_tokens} tokens were cut")
    return "; ".join(notes)


class ChatScreen(
    ModelActions, LiveNumbers, ConversationActions, BranchActions, CopyActions, TransferActions, Screen
):
    BINDINGS = bindings(CHAT_KEYS)
    COMMANDS = {ChatCommands}
    AUTO_FOCUS = "#prompt"

    class ReplyDelta(Message, bubble=False):
        def __init__(self, reply: ReplyStream, text: str, tokens: int = 0, rate: float | None = None) -> None:
            super().__init__()
            self.reply = reply
            self.text = text
            self.tokens = tokens  # generated so far
            # Tokens/s since the first text, as `ReplyStats.tokens_per_s` counts it; None: too early.
            self.rate = rate

    class SidebarShown(Message):
        """The conversation list was shown or hidden with Ctrl+G: the app remembers it for the next start."""

        def __init__(self, shown: bool) -> None:
            super().__init__()
            self.shown = shown

    class ReplyEnded(Message, bubble=False):
        def __init__(self, reply: ReplyStream, error: str | None) -> None:
            super().__init__()
            self.reply = reply
            self.error = error

    def __init__(
        self,
        store: ChatStore,
        defaults: dict,
        model_name: str,
        overrides: dict | None = None,
        sidebar: bool = True,
    ) -> None:
        """`overrides`: the chat flags, which win over a saved conversation's own settings too. `sidebar`: the
        conversation list shown at start (config.toml's `sidebar`)."""
        super().__init__()
        self.show_sidebar = sidebar
        self.store = store
        self.defaults = dict(defaults)  # the settings a new conversation starts with
        self.overrides = dict(overrides or {})
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
        # When the model became ready: Enter pressed before it (its key event older) is refused, not sent late.
        self.ready_since: float | None = None
        # The model before a switch, back if the new one fails.
        self.previous_session: ChatSession | None = None
        self.loading_timer = None
        # The model the open conversation was last with ("": a new one, none yet).
        self.conversation_model = ""
        self.warned_near_full: int | None = None  # the conversation the near-full warning was last given for

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                yield Static(id="chat-title", markup=False)
                yield MessageList(id="messages")
                yield PromptInput(
                    id="prompt", placeholder="Message  (Enter sends · Ctrl+J new line · F1 keys)"
                )
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one(Sidebar).display = self.show_sidebar
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
        if (
            self.session is None
            or self.ready_since is None
            or (event.pressed_at is not None and event.pressed_at < self.ready_since)
        ):
            # The text stays in the box: nothing is queued to be sent behind the user's back once the model is in.
            self.notify(
                "No model is loaded: nothing was sent."
                if self.model_failed
                else "The model was still loading: nothing was sent. Press Enter again once the status line says "
                "Ready.",
                severity="warning",
            )
            return
        if not self._can_change("send the next message"):
            return
        if self.editing is not None:
            await self.resend_edited(text)
            return
        dangling = (self.session.messages or [{}])[-1].get("role") == "user"
        try:
            reply = self.session.reply(text)
        except ChatError as e:
            self.notify(str(e), severity="error")
            return
        event.prompt_input.clear()
        conversation_id = self.conversation_id
        user_id = reply_id = None
        if self.unsaved is None:
            try:
                conversation_id = self._save_new_conversation(text)
                # The session records a reply that never came; so does the store: the turns alternate.
                if dangling:
                    self.store.append_message(conversation_id, "assistant", "", "cancelled")
                user_id = self.store.append_message(conversation_id, "user", text).id
                reply_id = self.store.append_message(conversation_id, "assistant", "").id
            except StoreWriteError as e:
                self._not_saved(e)  # the reply goes on; the conversation is kept in memory
            except StoreError as e:
                reply.close()
                self.notify(f"The message could not be saved: {e}", severity="error")
                if self.conversation_id is not None:
                    await self.open_conversation(self.conversation_id)
                return
        messages = self.query_one(MessageList)
        await messages.add(MessageView("user", text, message_id=user_id))
        self.query_one(Sidebar).refresh_list(self.store, conversation_id)
        await self._stream(reply, conversation_id, reply_id)

    async def _stream(self, reply: ReplyStream, conversation_id: int, message_id: int | None = None) -> None:
        """`message_id`: the stored reply the worker saves into; None when it could not be made."""
        view = await self.query_one(MessageList).add(
            MessageView("assistant", author=self.model_name, message_id=message_id)
        )
        view.start_stream()
        notice = context_notice(reply.prompt, self.session.context_length)
        if notice:
            view.set_notice(notice)
            self.notify(notice[0].upper() + notice[1:] + ".", title="Context window", severity="warning")
        self.reply, self.reply_view = reply, view
        self.query_one(StatusBar).state = "Generating… (Esc stops)"
        self.worker = self.run_worker(
            lambda: self._run_reply(reply, conversation_id, message_id),
            name="reply",
            group="reply",
            thread=True,
            exit_on_error=False,
        )

    def _save_reply(
        self, conversation_id: int, message_id: int | None, text: str, finish_reason: str | None = None
    ) -> None:
        if message_id is None:
            self.store.update_last_message(conversation_id, text, finish_reason)
        else:  # the reply's own message: another branch may be the last one written
            self.store.update_message(conversation_id, message_id, text, finish_reason)

    def _run_reply(self, reply: ReplyStream, conversation_id: int, message_id: int | None = None) -> None:
        """In the worker thread: generate, hand each delta to the UI, save as the reply grows."""
        error: str | None = None
        saved_at = shown_at = time.monotonic()
        pending = ""
        first: tuple[float, int] | None = None  # when the first text came, and the tokens by then
        try:
            for delta in reply:
                pending += delta
                now, count = time.monotonic(), reply.new_tokens
                if first is None:
                    first = (now, count)
                if now - shown_at >= SHOW_INTERVAL:
                    rate = (
                        (count - first[1]) / (now - first[0]) if count > first[1] and now > first[0] else None
                    )
                    self.post_message(self.ReplyDelta(reply, pending, count, rate))
                    pending, shown_at = "", time.monotonic()
                if (
                    time.monotonic() - saved_at >= SAVE_INTERVAL
                    and self.unsaved is None
                    and self._save_failure is None
                ):
                    saved_at = time.monotonic()
                    try:
                        self._save_reply(conversation_id, message_id, reply.text)
                    except StoreWriteError as e:  # keep generating; the UI thread writes it all later
                        self._save_failure = e
                    except StoreError as e:  # keep generating; the final save below tries again
                        error = str(e)
        except Exception as e:  # the model failed mid-reply; the stream recorded it as "error"
            error = f"{type(e).__name__}: {e}"
        finally:
            reply.close()  # a no-op once it ended; otherwise it is recorded as stopped and the session is free
            if pending:
                self.post_message(self.ReplyDelta(reply, pending, reply.new_tokens))
            if self.unsaved is None and self._save_failure is None:
                try:
                    self._save_reply(conversation_id, message_id, reply.text, reply.finish_reason)
                except StoreWriteError as e:
                    self._save_failure = e
                except StoreError as e:
                    error = error or str(e)
            self.post_message(self.ReplyEnded(reply, error))

    @on(ReplyDelta)
    async def _delta(self, event: ReplyDelta) -> None:
        if event.reply is self.reply and self.reply_view is not None:
            await self.reply_view.append(event.text)
            status = self.query_one(StatusBar)
            status.context_used = len(event.reply.prompt.ids) + event.tokens
            if event.rate is not None:
                status.tokens_per_s = event.rate
            self.reply_view.set_numbers(
                message_numbers("assistant", event.tokens, len(event.reply.prompt.ids), event.rate)
            )

    @on(ReplyEnded)
    async def _ended(self, event: ReplyEnded) -> None:
        reply = event.reply
        if self.reply_view is not None:
            await self.reply_view.finish(reply.finish_reason)
            if reply.stats is not None:
                self.reply_view.tokens_per_s = reply.stats.tokens_per_s
                self.reply_view.generated = (reply.stats.prompt_tokens, reply.stats.new_tokens)
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
        if self.session is not None:
            self._show_counts()
            if stats is not None:
                self._warn_if_near_full(stats.context_used)
        status.state = {"cancelled": "Stopped", "error": "Error"}.get(reply.finish_reason or "", "Ready")
        if event.error:
            self.notify(event.error, title="Generation failed", severity="error", timeout=15)
        elif reply.finish_reason == "context_full":
            self.notify(
                "The context window is full: start a new conversation (Ctrl+N) or lower max new tokens.",
                severity="warning",
            )
        self.refresh_branches()
        self.query_one(Sidebar).refresh_list()

    # -- actions (keys.py binds them; the command palette offers them) ------------------------------------------

    def action_stop(self) -> None:
        if self.reply is not None and self.session is not None:
            self.session.cancel()
            self.query_one(StatusBar).state = "Stopping…"
        elif self.editing is not None:
            self.cancel_edit()
        else:
            self.query_one(PromptInput).focus()
