"""The conversation's generation settings. Values are checked by `ChatSettings` itself, so the screen and the
session cannot disagree on what is valid; the next reply uses them."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

# name, label, parse, hint; an empty box means None where the setting allows it
FIELDS: list[tuple[str, str, type, str]] = [
    ("temperature", "Temperature", float, "0 is greedy"),
    ("top_k", "Top-k", int, "empty or 0: off"),
    ("top_p", "Top-p", float, "empty or 1: off"),
    ("repetition_penalty", "Repetition penalty", float, "1 is off"),
    ("max_new_tokens", "Max new tokens", int, "the longest reply"),
    ("seed", "Seed", int, "empty: a fresh draw each reply"),
]
OPTIONAL = {"top_k", "top_p", "seed"}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parse(system_prompt: str, boxes: dict[str, str]) -> dict:
    """The settings the boxes hold, checked by `ChatSettings`; raises `ValueError` (a `ChatError` is one) saying what
    is wrong."""
    from ...session import ChatSettings  # loaded with the model already; here only when the screen saves

    values: dict[str, Any] = {"system_prompt": system_prompt.strip()}
    for name, label, kind, _ in FIELDS:
        text = boxes[name].strip()
        if not text and name in OPTIONAL:
            values[name] = None
            continue
        try:
            values[name] = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{label}: {text!r} is not {what}") from None
    return ChatSettings(**values).to_dict()


class SettingsScreen(ModalScreen[dict | None]):
    """Dismissed with the new settings as a dict (`ChatSettings.to_dict()`), or None when cancelled."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+s", "save", "Save", priority=True)]

    def __init__(self, settings: dict, title: str) -> None:
        super().__init__()
        self.settings = settings
        self.conversation_title = title

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(f"Settings · {self.conversation_title}", classes="dialog-title", markup=False)
            yield Label("System prompt (empty: the chat template's own)")
            yield TextArea(self.settings.get("system_prompt", ""), id="system_prompt", soft_wrap=True,
                           tab_behavior="focus", compact=True)
            with Grid(id="fields"):
                for name, label, _, hint in FIELDS:
                    yield Label(label)
                    yield Input(_text(self.settings.get(name)), id=name, compact=True)
                    yield Static(hint, classes="hint")
            yield Static("", id="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save (Ctrl+S)", variant="primary", id="save", compact=True)
                yield Button("Cancel (Esc)", id="cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        boxes = {name: self.query_one(f"#{name}", Input).value for name, *_ in FIELDS}
        try:
            settings = parse(self.query_one("#system_prompt", TextArea).text, boxes)
        except ValueError as e:
            self.query_one("#error", Static).update(str(e))
            return
        self.dismiss(settings)
