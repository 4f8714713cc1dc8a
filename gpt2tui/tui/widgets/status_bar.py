"""The line above the key footer: the model, its device and attention backend, how much of the context window the
conversation uses (a bar), the decoding speed (live while a reply streams), and what the app is doing."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import LoadingIndicator, Static

BAR_CELLS = 10
NARROW = 80  # columns below which the line keeps only the model's name, the numbers and the speed
EIGHTHS = " ▏▎▍▌▋▊▉█"


def context_bar(used: int, window: int, cells: int = BAR_CELLS) -> Content:
    """`used` out of `window` as a bar of `cells` cells, in eighths of a cell; it turns amber past 3/4 of the window
    and red past 9/10, where the oldest turns are about to be left out."""
    fraction = max(0.0, min(used / window, 1.0)) if window > 0 else 0.0
    eighths = round(fraction * cells * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (EIGHTHS[part] if full < cells else "")
    bar = bar.ljust(cells, " ")
    style = "$error" if fraction > 0.9 else "$warning" if fraction > 0.75 else "$success"
    return Content.assemble((bar, f"{style} on $foreground 10%"))


class StatusBar(Horizontal):
    model: reactive[str] = reactive("")
    model_path: reactive[str] = reactive(
        ""
    )  # the whole name or path, shown on hover: `model` may be its last part
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

    def render_info(self) -> Content:
        narrow = 0 < self.size.width < NARROW
        parts: list[Content] = []
        if self.model:
            shown = (self.model,) if narrow else (self.model, self.device, self.attention)
            parts.append(Content(" · ".join(p for p in shown if p)))
        if self.context_window:
            # A reply that fills the window ends with one token the model never read back: count the window.
            used = None if self.context_used is None else min(self.context_used, self.context_window)
            numbers = f"{'–' if used is None else used}/{self.context_window}"
            if narrow:
                parts.append(Content(numbers))
            else:
                parts.append(
                    Content.assemble("ctx ", context_bar(used or 0, self.context_window), f" {numbers}")
                )
        if self.device:
            parts.append(
                Content("– tok/s" if self.tokens_per_s is None else f"{self.tokens_per_s:.1f} tok/s")
            )
        return Content(" │ ").join(parts)

    def _refresh_text(self) -> None:
        if not self.is_mounted:
            return
        self.query_one("#state", Static).update(self.state)
        info = self.query_one("#model-info", Static)
        info.update(self.render_info())
        info.tooltip = self.model_path or None

    def on_mount(self) -> None:
        self.watch_loading(self.loading)
        self._refresh_text()

    def on_resize(self) -> None:
        self._refresh_text()

    # One redraw whatever changed.
    watch_model = watch_device = watch_attention = watch_context_used = watch_context_window = _refresh_text
    watch_tokens_per_s = watch_state = watch_model_path = _refresh_text
