"""The conversation's generation settings, and the preferences kept in config.toml (theme, the conversation list,
the default model, what new conversations start with).

Values are parsed and checked by `setting_fields`, the table `ChatSettings`, `/set`, the chat flags and config.toml
share, so the dialog and the session cannot disagree on what is valid, and an error names the setting as the dialog
labels it and says its range. Every check reads the boxes as they are when Save is pressed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static, TextArea

from ...chat import ChatError
from ...prefs import Prefs, save_prefs, shown_path
from ...setting_fields import FIELDS, check_system_prompt


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parse(system_prompt: str, boxes: dict[str, str]) -> dict:
    """The settings the boxes hold, as `ChatSettings` fields; raises `ChatError` naming the first box that is wrong,
    by its label, with its range."""
    values: dict[str, Any] = {"system_prompt": check_system_prompt(system_prompt.strip())}
    for name, field in FIELDS.items():
        values[name] = field.parse(boxes[name])
    return values


@dataclass(frozen=True)
class SettingsResult:
    settings: dict  # the conversation's, as `ChatSettings` fields
    prefs: Prefs | None  # what config.toml now holds, when the dialog wrote it; None when it was left alone


class SettingsScreen(ModalScreen[SettingsResult | None]):
    """Dismissed with a `SettingsResult`, or None when cancelled. A failure (a bad value, config.toml that cannot be
    written) is said on the error line and the dialog stays open with everything typed."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel"), Binding("ctrl+s", "save", "Save", priority=True)]

    def __init__(self, settings: dict, title: str, prefs: Prefs | None = None, prefs_path=None) -> None:
        super().__init__()
        self.settings = settings
        self.conversation_title = title
        self.prefs = prefs or Prefs()
        self.prefs_path = prefs_path  # None: config.toml in $XDG_CONFIG_HOME/gpt2tui
        self._checked: dict[str, str] | None = None  # the boxes the error line is about

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Static(f"Settings · {self.conversation_title}", classes="dialog-title", markup=False)
            yield Label("System prompt (empty: the chat template's own)")
            yield TextArea(self.settings.get("system_prompt", ""), id="system_prompt", soft_wrap=True,
                           tab_behavior="focus", compact=True)
            with Grid(id="fields"):
                for name, field in FIELDS.items():
                    yield Label(field.label)
                    yield Input(_text(self.settings.get(name)), id=name, compact=True)
                    yield Static(field.describe(), classes="hint", markup=False)
            yield Checkbox("Start new conversations with these settings too", id="as_default", compact=True)
            yield Static(f"Preferences, kept in {shown_path(self.prefs_path)}", classes="section", markup=False)
            with Grid(id="prefs"):
                yield Label("Theme")
                themes = sorted(self.app.available_themes)
                theme = self.prefs.theme if self.prefs.theme in themes else self.app.theme
                yield Select([(t, t) for t in themes], value=theme, allow_blank=False, id="theme", compact=True)
                yield Label("Default model")
                yield Input(self.prefs.model or "", id="default_model", placeholder="gpt2", compact=True)
            yield Checkbox("Show the conversation list at start", self.prefs.sidebar is not False, id="sidebar",
                           compact=True)
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

    def _boxes(self) -> dict[str, str]:
        boxes = {name: self.query_one(f"#{name}", Input).value for name in FIELDS}
        boxes["system_prompt"] = self.query_one("#system_prompt", TextArea).text
        return boxes

    @on(Input.Changed)
    @on(TextArea.Changed)
    def _edited(self) -> None:
        # An error is about the values it was given: once they change, it no longer describes the boxes. (A change
        # message may arrive after the save it preceded: only a value other than the checked one clears it.)
        if self._checked is not None and self._boxes() != self._checked:
            self._checked = None
            self.query_one("#error", Static).update("")

    def _new_prefs(self, settings: dict) -> Prefs:
        theme = self.query_one("#theme", Select).value
        model = self.query_one("#default_model", Input).value.strip()
        sidebar = self.query_one("#sidebar", Checkbox).value
        chat = dict(self.prefs.chat)
        if self.query_one("#as_default", Checkbox).value:
            chat = {k: v for k, v in settings.items() if k != "system_prompt" or v}
        # A theme or a list setting is written once chosen here or already in the file: the app's defaults are not
        # pinned by a save that did not touch them.
        return replace(
            self.prefs,
            theme=theme if self.prefs.theme is not None or theme != self.app.theme else None,
            model=model or None,
            sidebar=sidebar if self.prefs.sidebar is not None or not sidebar else None,
            chat=chat,
        )

    def action_save(self) -> None:
        error = self.query_one("#error", Static)
        boxes = self._boxes()  # read now: the values checked are the ones on the screen
        try:
            settings = parse(boxes["system_prompt"], boxes)
        except ChatError as e:
            self._checked = boxes
            error.update(str(e))
            return
        prefs = self._new_prefs(settings)
        if prefs == self.prefs:
            self.dismiss(SettingsResult(settings, None))
            return
        try:
            save_prefs(prefs, self.prefs_path)
        except OSError as e:
            where = e.filename or shown_path(self.prefs_path)
            self._checked = boxes
            error.update(f"Preferences not saved: {where}: {e.strerror or e}. Nothing was changed; check that "
                         "folder's permissions and free space, or Cancel.")
            return
        self.dismiss(SettingsResult(settings, prefs))
