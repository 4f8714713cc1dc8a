"""The chat app: a full-screen terminal chat with a GPT-2 running in this process.

    ChatApp("gpt2").run()

The app opens at once and loads the model in a thread worker (torch itself is imported there, so the first frame
does not wait for it). It talks to a `ChatSession` and a `ChatStore` only; it never sees a tensor. Tests and embedders
pass `loader`, any callable that returns a ready `ChatSession`.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App
from textual.message import Message

from ..errors import GPT2TUIError, ModelNotFoundError
from ..prefs import load_prefs, remember
from ..store import ChatStore, DatabaseMovedWarning, StoreError
from .keys import APP_KEYS, bindings
from .screens import ChatScreen, HelpScreen, ModelChoice, NoModelScreen

if TYPE_CHECKING:
    from textual.theme import Theme

    from ..session import ChatSession


def short_name(model: str) -> str:
    """A model's name for the screen: a directory by its last part, a name as it is."""
    path = Path(model)
    return path.name if path.name and (len(path.parts) > 1 or path.is_dir()) else model


class ChatApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "gpt2tui"
    BINDINGS = bindings(APP_KEYS)

    class Loaded(Message):
        def __init__(self, session: ChatSession) -> None:
            super().__init__()
            self.session = session

    class Switched(Message):
        def __init__(self, session: ChatSession, choice: ModelChoice) -> None:
            super().__init__()
            self.session = session
            self.choice = choice

    class SwitchFailed(Message):
        def __init__(self, choice: ModelChoice, error: str) -> None:
            super().__init__()
            self.choice = choice
            self.error = error

    class LoadFailed(Message):
        def __init__(self, error: str, missing: bool, saved: list[str], models_dir: str) -> None:
            super().__init__()
            self.error = error
            self.missing = missing
            self.saved = saved
            self.models_dir = models_dir

    def __init__(
        self,
        model: str = "gpt2",
        *,
        loader: Callable[[], ChatSession] | None = None,
        device: str | None = None,
        settings: dict | None = None,
        store_path: str | Path | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        load_named: Callable[[ModelChoice], ChatSession] | None = None,
    ) -> None:
        """`settings`: what a new conversation starts with (`ChatSettings` fields; the rest keep their defaults).
        `dtype`/`quantize`: as `--dtype`/`--quantize`, the model picker's defaults. `load_named`: loads the model the
        picker chose (default: `ChatSession.load` on `device`, never downloading)."""
        super().__init__()
        self.model = model
        self.loader = loader or (lambda: _load_session(model, device, dtype, quantize))
        self.load_named = load_named or (lambda c: _load_session(c.name, device, c.dtype, c.quantize))
        self.dtype = dtype
        self.quantize = quantize
        self.defaults = dict(settings or {})
        self.store_path = store_path
        self.store: ChatStore | None = None
        self.session: ChatSession | None = None
        self.chat: ChatScreen | None = None
        self._said_prefs = False  # a preference that could not be remembered is said once a session

    def on_mount(self) -> None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DatabaseMovedWarning)
                self.store = ChatStore(self.store_path)
        except StoreError as e:
            # The chat works all the same; what is said here is all that is lost.
            self.store = ChatStore.temporary()
            self.notify(f"{e}. This session's conversations are kept only until you quit.",
                        title="History cannot be saved", severity="warning", timeout=60)
        for w in caught:
            if issubclass(w.category, DatabaseMovedWarning):
                self.notify(str(w.message), title="Chat database moved aside", severity="warning", timeout=30)
        # config.toml: below the flags (self.defaults) and a conversation's own settings, above the built-in defaults.
        prefs, problems = load_prefs()
        if prefs.theme is not None and prefs.theme not in self.available_themes:
            problems.append(f"config.toml: theme {prefs.theme!r} is not one of Textual's themes "
                            f"({', '.join(sorted(self.available_themes))}); the default applies")
        elif prefs.theme is not None:
            self.theme = prefs.theme
        # After the file's theme is applied: a theme picked from the command palette is remembered in the file.
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        for problem in problems:
            self.notify(problem, title="Preferences", severity="warning", timeout=20)
        self.chat = ChatScreen(self.store, {**prefs.chat, **self.defaults}, short_name(self.model),
                               overrides=self.defaults, sidebar=prefs.sidebar is not False)
        self.push_screen(self.chat)
        self.load_model()

    def _remember(self, **changes) -> None:
        """Keep a preference changed outside the settings dialog in config.toml; if it cannot be, say why (once)."""
        problem = remember(**changes)
        if problem and not self._said_prefs:
            self._said_prefs = True
            self.notify(problem, title="Preference not remembered", severity="warning", timeout=15)

    def _theme_changed(self, theme: Theme) -> None:
        self._remember(theme=theme.name)

    def on_chat_screen_sidebar_shown(self, event: ChatScreen.SidebarShown) -> None:
        self._remember(sidebar=event.shown)

    @work(thread=True, exit_on_error=False, name="load model")
    def load_model(self) -> None:
        try:
            session = self.loader()
        except Exception as e:  # any failure is shown on the screen; the app keeps running
            # Deferred: weights imports torch, and the app's first frame comes before torch loads.
            from ..weights import local_models, models_dir

            message = str(e) if isinstance(e, GPT2TUIError) else f"{type(e).__name__}: {e}"
            try:
                saved = [m["name"] for m in local_models()]
            except Exception:
                saved = []
            self.post_message(self.LoadFailed(message, isinstance(e, ModelNotFoundError), saved, str(models_dir())))
        else:
            self.post_message(self.Loaded(session))

    def on_chat_app_loaded(self, event: Loaded) -> None:
        self.session = event.session
        if self.chat is not None:
            self.chat.session_ready(event.session)

    @work(thread=True, exit_on_error=False, name="switch model", group="load model", exclusive=True)
    def switch_model(self, choice: ModelChoice) -> None:
        """Load another model behind the chat; the chat screen shows the progress and refuses to send meanwhile."""
        try:
            session = self.load_named(choice)
        except Exception as e:  # said in one line; the model before stays
            message = str(e) if isinstance(e, GPT2TUIError) else f"{type(e).__name__}: {e}"
            self.post_message(self.SwitchFailed(choice, message))
        else:
            self.post_message(self.Switched(session, choice))

    def on_chat_app_switched(self, event: Switched) -> None:
        self.session = event.session
        self.dtype, self.quantize = event.choice.dtype, event.choice.quantize
        if self.chat is not None:
            self.chat.model_switched(event.session, short_name(event.choice.name))

    def on_chat_app_switch_failed(self, event: SwitchFailed) -> None:
        if self.chat is not None:
            self.chat.model_switch_failed(event.choice, event.error)

    def on_chat_app_load_failed(self, event: LoadFailed) -> None:
        if self.chat is not None:
            self.chat.session_failed()
        self.push_screen(NoModelScreen(self.model, event.error, event.missing, event.saved, event.models_dir))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Stop a reply in flight and let its worker save it before leaving."""
        chat = self.chat
        if chat is not None and chat.worker is not None and self.session is not None:
            self.session.cancel()
            try:
                await asyncio.wait_for(chat.worker.wait(), timeout=10)
            except Exception:  # a failed or slow worker must not keep the app open
                pass
        if chat is not None and chat.unsaved is not None and not chat.catch_up():
            # Said where the user sees it after the screen is gone: what could not be written is lost now.
            self.exit(return_code=1, message=f"not saved: {chat.unsaved}; the last messages of that conversation "
                                             "are lost")
            return
        self.exit()

    def on_unmount(self) -> None:
        if self.store is not None and (self.chat is None or self.chat.worker is None):
            self.store.close()


def _load_session(model: str, device: str | None, dtype: str | None = None, quantize: str | None = None) -> ChatSession:
    # This default never downloads (tests and embedders get the no-model screen instead); the `gpt2tui` command passes
    # a loader that fetches a missing official model once, with a notice (cli._run_app).
    import torch  # deferred, as below

    from ..session import ChatSession  # deferred: imports torch, in the loading worker

    return ChatSession.load(model, device=device, dtype=getattr(torch, dtype) if dtype else None,
                            allow_download=False, quantize=quantize)
