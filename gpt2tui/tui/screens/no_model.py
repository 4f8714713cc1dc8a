"""Shown when no model could be loaded: what went wrong and how to get a model. The saved conversations stay
readable behind it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HOW_TO_GET_ONE = """\
How to get a model:

  gpt2tui download gpt2
      the official GPT-2 (124M, about 500 MB) from the Hugging Face Hub,
      with a progress bar; gpt2-medium, -large and -xl download the same way
  gpt2tui --model PATH
      a Hugging Face GPT-2 directory or a gpt2tui checkpoint directory
  gpt2tui finetune / gpt2tui pretrain
      train one yourself: it is saved in {models_dir}
      and opens with gpt2tui --model NAME

`gpt2tui models` lists the models usable here."""


class NoModelScreen(ModalScreen[None]):
    BINDINGS = [Binding("q,ctrl+q", "app.quit", "Quit"), Binding("escape", "dismiss", "Read saved chats")]

    def __init__(self, model: str, error: str, missing: bool, saved: list[str], models_dir: str) -> None:
        super().__init__()
        self.model = model
        self.error = error
        self.missing = missing
        self.saved = saved
        self.models_dir = models_dir

    def compose(self) -> ComposeResult:
        title = f"No model to chat with: {self.model}" if self.missing else f"The model {self.model} could not be loaded"
        with Vertical(id="dialog"):
            yield Static(title, classes="dialog-title", markup=False)
            yield Static(self.error, id="error", markup=False)
            yield Static(HOW_TO_GET_ONE.format(models_dir=self.models_dir), id="how", markup=False)
            if self.saved:
                yield Static("Saved here: " + ", ".join(self.saved), id="saved", markup=False)
            yield Static("q quits · Esc reads the saved conversations (without a model, nothing can be sent)",
                         classes="dialog-hint", markup=False)
