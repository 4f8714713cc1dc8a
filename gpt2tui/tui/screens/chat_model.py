"""The chat screen's model: the status line while it loads, switching to another (F4), the conversation's settings
(Ctrl+S), and handing the session the conversation on screen.

The app loads a model in a thread and calls back: `session_ready` or `session_failed` for the first, `model_switched`
or `model_switch_failed` after F4. While one loads nothing can be sent; a switch that fails keeps the model before it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ...chat import ChatError
from ...prefs import load_prefs
from ...store import StoreError, StoreWriteError
from ..widgets import MessageList, Sidebar, StatusBar
from .model_picker import ModelChoice, ModelPickerScreen, model_problem
from .settings import SettingsResult, SettingsScreen

if TYPE_CHECKING:
    from ...session import ChatSession


class ModelActions:
    """Mixed into `ChatScreen`, whose session, store, status line and conversation these use."""

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
        self.ready_since = time.monotonic()
        status.model_path = getattr(session.model, "name_or_path", None) or session.model_name
        self._apply_to_session()
        self._check_conversation_model(self.conversation_model)

    def loading_state(self, text: str) -> None:
        """What the status line says while the first model loads (a first download, from `cli`). session_ready or
        session_failed replace it when the load ends, so it never outlasts the load as a toast would."""
        self.query_one(StatusBar).state = text

    def session_failed(self) -> None:
        self.model_failed = True
        status = self.query_one(StatusBar)
        status.loading = False
        status.state = "No model"

    # -- switching the model (F4) ------------------------------------------------------------------------------

    def model_loading(self, choice: ModelChoice) -> None:
        """While another model loads nothing can be sent; the status line counts the seconds."""
        self.previous_session, self.session, self.ready_since = self.session, None, None
        status = self.query_one(StatusBar)
        status.loading = True
        started = time.monotonic()

        def tick() -> None:
            status.state = f"Loading {choice.describe()}… {time.monotonic() - started:.0f} s"

        tick()
        self.loading_timer = self.set_interval(1.0, tick)

    def _loading_done(self) -> None:
        if self.loading_timer is not None:
            self.loading_timer.stop()
            self.loading_timer = None

    def model_switched(self, session: ChatSession, short: str) -> None:
        self._loading_done()
        self.previous_session = None
        self.model_failed = False
        self.model_name = short
        status = self.query_one(StatusBar)
        status.model = short
        self.conversation_model = session.model_name
        if self.conversation_id is not None and self.unsaved is None:
            try:
                self.store.set_model(self.conversation_id, session.model_name)
            except StoreWriteError as e:
                self._not_saved(e)
            except StoreError as e:
                self.notify(f"The conversation's model was not saved: {e}", severity="warning")
        self.session_ready(session)
        self.notify(f"Now chatting with {session.model_name}; this conversation remembers it.", title="Model")

    def model_switch_failed(self, choice: ModelChoice, error: str) -> None:
        self._loading_done()
        status = self.query_one(StatusBar)
        status.loading = False
        before = self.previous_session
        self.previous_session = None
        if before is not None:
            self.session_ready(before)
            stays = f" Still chatting with {before.model_name}."
        else:
            status.state = "No model"
            stays = ""
        self.notify(
            f"{choice.name} could not be loaded: {error}.{stays}",
            title="Model not switched",
            severity="error",
            timeout=15,
        )

    def action_pick_model(self) -> None:
        if not self._can_change("switch the model"):
            return
        if self.session is None and not self.model_failed:
            self.notify("A model is loading: wait until the status line says Ready.", severity="warning")
            return
        current = self.session.model_name if self.session is not None else ""
        stored = self.conversation_model if self.conversation_model != current else None

        def chosen(choice: ModelChoice | None) -> None:
            if choice is None:
                return
            if (
                self.session is not None
                and choice.name == current
                and (choice.dtype, choice.quantize) == (self.app.dtype, self.app.quantize)
            ):
                self.notify(f"{current} is the model already.")
                return
            self.model_loading(choice)
            self.app.switch_model(choice)

        self.app.push_screen(ModelPickerScreen(current, stored, self.app.dtype, self.app.quantize), chosen)

    def _check_conversation_model(self, model: str) -> None:
        """Say when the conversation was with another model than the one loaded, and whether that one is still here
        (found in a worker: looking it up reads the disk)."""
        self.conversation_model = model
        current = self.session.model_name if self.session is not None else None
        if not model or current is None or model == current:
            return

        def check() -> None:
            problem = model_problem(model)
            if problem:
                text = (
                    f"This conversation was with {model}, which is not here any more ({problem}); replies now "
                    f"come from {current}. F4 picks another model."
                )
            else:
                text = (
                    f"This conversation was with {model}; replies now come from {current}. F4 switches back."
                )
            self.app.call_from_thread(self.notify, text, title="Model", severity="warning", timeout=10)

        self.run_worker(
            check, name="check model", group="check model", thread=True, exclusive=True, exit_on_error=False
        )

    def _apply_to_session(self) -> None:
        """Give the session the open conversation and its settings."""
        if self.session is None:
            return
        from ...session import ChatSettings  # deferred: imports torch; the app draws before torch loads

        try:
            self.session.settings = ChatSettings.from_dict(self.settings)
        except (ChatError, TypeError) as e:
            self.notify(
                f"This conversation's saved settings are not usable ({e}); the defaults apply.",
                severity="warning",
            )
            self.session.settings = ChatSettings()
        messages = [{"role": v.role, "content": v.content} for v in self.query_one(MessageList).views]
        try:
            self.session.set_messages(messages)
        except ChatError as e:
            self.notify(
                f"This conversation cannot be continued ({e}); start a new one with Ctrl+N.", severity="error"
            )
            self.session.set_messages([])
        self._show_context_estimate()

    # -- settings (Ctrl+S) -------------------------------------------------------------------------------------

    def action_settings(self) -> None:
        from ...session import ChatSettings  # deferred: imports torch; the app draws before torch loads

        try:
            current = ChatSettings.from_dict(self.settings).to_dict()
        except (ChatError, TypeError):
            current = ChatSettings().to_dict()

        def saved(result: SettingsResult | None) -> None:
            if result is None:
                return
            settings = result.settings
            if result.prefs is not None:  # config.toml was written: what it says applies now
                prefs = result.prefs
                self.defaults = {**prefs.chat, **self.overrides}
                self.app.theme = prefs.theme or self.app.theme
                if prefs.sidebar is not None:
                    self.query_one(Sidebar).display = prefs.sidebar
            self.settings = settings
            if self.conversation_id is not None and self.unsaved is None:
                try:
                    self.store.save_settings(self.conversation_id, settings)
                except StoreWriteError as e:
                    self._not_saved(e)
            if self.session is not None:
                self.session.settings = ChatSettings.from_dict(settings)
            self.notify("Settings saved: the next reply uses them.")

        self.app.push_screen(SettingsScreen(current, self.conversation_title, load_prefs()[0]), saved)
