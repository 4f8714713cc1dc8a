"""The line above the key footer: the model, its device and attention backend, how much of the context window the
conversation uses, the speed of the last reply, and what the app is doing."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import LoadingIndicator, Static


class StatusBar(Horizontal):
    model: reactive[str] = reactive("")
    device: reactive[str] = reactive("")
    attention: reactive[str] = reactive("")
    context_used: reactive[int | None] = reactive(None)
    context_window: reactive[int | None] = reactive(None)
    tokens_per_s: reactive[float | None] = reactive(None)
    state: reactive[str] = reactive("")
    loading: reactive[bool] = reactive(False)

    def compose(self) -> ComposeResult:
        yield LoadingIndicator(id="spinner")
        yield Static(id="state", markup=False)
        yield Static(id="model-info", markup=False)

    def watch_loading(self, loading: bool) -> None:
        self.query_one("#spinner").display = loading

    def render_info(self) -> str:
        parts = []
        if self.model:
            parts.append(" · ".join(p for p in (self.model, self.device, self.attention) if p))
        if self.context_window:
            # A reply that fills the window ends with one token the model never read back: count the window.
            used = "–" if self.context_used is None else str(min(self.context_used, self.context_window))
            parts.append(f"ctx {used}/{self.context_window}")
        if self.device:
            parts.append("– tok/s" if self.tokens_per_s is None else f"{self.tokens_per_s:.1f} tok/s")
        return " │ ".join(parts)

    def _refresh_text(self) -> None:
        if not self.is_mounted:
            return
        self.query_one("#state", Static).update(self.state)
        self.query_one("#model-info", Static).update(self.render_info())

    def on_mount(self) -> None:
        self.watch_loading(self.loading)
        self._refresh_text()

    # One redraw whatever changed.
    watch_model = watch_device = watch_attention = watch_context_used = watch_context_window = _refresh_text
    watch_tokens_per_s = watch_state = _refresh_text
