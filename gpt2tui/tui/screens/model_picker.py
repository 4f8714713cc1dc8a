"""Switch the model: the models `gpt2tui models` lists, or any name or folder typed in, with the precision to load it
in. The app loads the choice in a worker while the chat stays on screen; the conversation remembers it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

# The choices of `gpt2tui chat --dtype/--quantize`; "" is the flag left out.
DTYPES = [
    ("auto (bfloat16 on a GPU, else float32)", ""),
    ("float32", "float32"),
    ("bfloat16", "bfloat16"),
    ("float16", "float16"),
]
QUANTIZE = [("no (as stored)", ""), ("int8", "int8"), ("bfloat16", "bfloat16")]


@dataclass(frozen=True)
class ModelChoice:
    name: str  # a name (saved or official) or a folder
    dtype: str | None = None
    quantize: str | None = None

    def describe(self) -> str:
        extra = [x for x in (self.dtype, self.quantize and f"{self.quantize} weights") if x]
        return self.name + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class ModelEntry:
    """One line of `gpt2tui models`."""

    name: str
    path: str
    source: str
    summary: str  # parameters, shape and window; or what is wrong with it


def list_models() -> list[ModelEntry]:
    """The models usable here without a download, as `gpt2tui models` finds them (in a worker: it reads headers)."""
    # Deferred: weights imports torch, which the app's first frame never waits for.
    from ...weights import local_models

    entries = []
    for m in local_models():
        cfg = m.get("config")
        if cfg is None:
            summary = f"unreadable: {m.get('error', 'unknown error')}"
        else:
            summary = (
                f"{cfg.n_params() / 1e6:.1f}M · {cfg.n_layers} × {cfg.emb_dim} · window {cfg.context_length}"
            )
        entries.append(ModelEntry(m["name"], str(m["path"]), m["source"], summary))
    return entries


def model_problem(name: str) -> str:
    """Why `name` cannot be loaded here, without loading it ("" when it can be found); in a worker."""
    from ...weights import resolve  # deferred, as above

    try:
        resolve(name, allow_download=False)
    except Exception as e:  # whatever the reason, it is said, not raised: the conversation opens all the same
        return str(e)
    return ""


def typed_model_problem(text: str) -> str:
    """What is wrong with a typed model at a glance ("" when it may load): a path that is not there. Names are left
    to the loader, which says what it knows of them."""
    looks_like_path = os.sep in text or text.startswith((".", "~"))
    if looks_like_path and not Path(os.path.expanduser(text)).exists():
        return f"There is no folder {text}: type a model folder or a name, or pick one from the list."
    return ""


class ModelPickerScreen(ModalScreen[ModelChoice | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    class Listed(Message):
        def __init__(self, entries: list[ModelEntry] | None, error: str = "") -> None:
            super().__init__()
            self.entries = entries
            self.error = error

    def __init__(
        self,
        current: str,
        suggested: str | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        lister=list_models,
    ) -> None:
        """`current`: the model loaded now; `suggested`: the one to start on (the conversation's own)."""
        super().__init__()
        self.current = current
        self.suggested = suggested
        self.dtype = dtype
        self.quantize = quantize
        self.lister = lister
        self.entries: list[ModelEntry] = []
        self.listed = False  # the list is filled in (or says why it cannot be)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(
                f"Switch model · now: {self.current or 'none'}", classes="dialog-title", markup=False
            )
            yield OptionList(Option("Looking for models…", disabled=True), id="models")
            yield Static("", id="where", markup=False)
            yield Input(
                placeholder="…or type a model folder or name (gpt2-medium, ~/models/my-bot)", id="path"
            )
            with Horizontal(id="precision"):
                yield Label("weights")
                yield Select(DTYPES, value=self.dtype or "", allow_blank=False, id="dtype", compact=True)
                yield Label("quantize")
                yield Select(
                    QUANTIZE, value=self.quantize or "", allow_blank=False, id="quantize", compact=True
                )
            with Horizontal(classes="buttons"):
                yield Button("Load", variant="primary", id="load", compact=True)
                yield Button("Cancel (Esc)", id="cancel", compact=True)
            yield Static(
                "Enter on a model, or on a typed folder, loads it in the background; the chat stays usable "
                "to read. This conversation remembers the model.",
                classes="dialog-hint",
                markup=False,
            )

    def on_mount(self) -> None:
        self.query_one("#models", OptionList).focus()
        self.find_models()

    @work(thread=True, exit_on_error=False, group="list models")
    def find_models(self) -> None:
        try:
            self.post_message(self.Listed(self.lister()))
        except Exception as e:  # a listing that fails leaves the typed path, and says why
            self.post_message(self.Listed(None, f"{type(e).__name__}: {e}"))

    def on_model_picker_screen_listed(self, event: Listed) -> None:
        options = self.query_one("#models", OptionList)
        options.clear_options()
        self.entries = event.entries or []
        self.listed = True
        if event.entries is None:
            options.add_option(
                Option(f"The models could not be listed ({event.error}); type one below.", disabled=True)
            )
            return
        if not self.entries:
            options.add_option(
                Option("No models here yet (gpt2tui download gpt2, or a folder below).", disabled=True)
            )
            self.query_one("#path", Input).focus()
            return
        width = max(len(e.name) for e in self.entries)
        for i, e in enumerate(self.entries):
            mark = "●" if e.name == self.current or e.path == self.current else " "
            options.add_option(Option(f"{mark} {e.name:<{width}}  {e.summary} · {e.source}", id=str(i)))
        wanted = self.suggested or self.current
        start = next((i for i, e in enumerate(self.entries) if wanted in (e.name, e.path)), 0)
        options.highlighted = start

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        # The whole path, wrapped: a list line has no room for it.
        if event.option.id is not None:
            self.query_one("#where", Static).update(self.entries[int(event.option.id)].path)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self._choose(self.entries[int(event.option.id)].name)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._load_typed()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        elif self.query_one("#path", Input).value.strip():
            self._load_typed()
        else:
            highlighted = self.query_one("#models", OptionList).highlighted_option
            if highlighted is None or highlighted.id is None:
                self.notify("Pick a model from the list, or type a folder or name.", severity="warning")
                return
            self._choose(self.entries[int(highlighted.id)].name)

    def _load_typed(self) -> None:
        text = self.query_one("#path", Input).value.strip()
        if not text:
            self.notify("Type a model folder or name, or pick one from the list.", severity="warning")
            return
        problem = typed_model_problem(text)
        if problem:
            self.notify(problem, severity="warning")
            return
        self._choose(os.path.expanduser(text))

    def _choose(self, name: str) -> None:
        dtype = self.query_one("#dtype", Select).value
        quantize = self.query_one("#quantize", Select).value
        self.dismiss(ModelChoice(name, dtype or None, quantize or None))
