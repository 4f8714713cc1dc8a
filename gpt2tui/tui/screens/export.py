"""Where and how to export: this conversation or every one, as Markdown (the path shown) or JSON (every branch, which
F5 imports back). The path typed stays in the box until the export is written: a path that fails is said in the dialog,
under it, to be corrected rather than typed again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, RadioButton, RadioSet, Static

from ...errors import GPT2TUIError
from ...store import ExportFolderMissingError
from .confirm import ConfirmScreen

# (format, every conversation): the label of each choice
CHOICES: list[tuple[tuple[str, bool], str]] = [
    (("md", False), "This conversation as Markdown (the branch shown)"),
    (("json", False), "This conversation as JSON (every branch; F5 imports it)"),
    (("md", True), "Every conversation as Markdown"),
    (("json", True), "Every conversation as JSON (every branch; F5 imports it)"),
]

# Writes an export: (path typed, format, every conversation, create a missing folder) -> the file written. Raises
# `ExportFolderMissingError` for a folder to ask about, or another error whose message says what is wrong.
Writer = Callable[[str, str, bool, bool], Path]


class ExportScreen(ModalScreen[Path | None]):
    """Dismissed with the file written, or None when cancelled."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(
        self, write: Writer, default_names: dict[tuple[str, bool], str], everything: bool = False
    ) -> None:
        super().__init__()
        self.write = write
        self.default_names = (
            default_names  # per choice: the name it gets in the current directory or a folder
        )
        self.choice = ("md", everything)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Export", classes="dialog-title")
            with RadioSet(id="format"):
                for value, label in CHOICES:
                    yield RadioButton(label, value=value == self.choice, name=f"{value[0]}:{int(value[1])}")
            yield Input(
                self.default_names[self.choice], placeholder="A file, or a folder to put it in", id="path"
            )
            yield Static("", id="error", markup=False)
            yield Static(self._hint(), classes="dialog-hint", id="hint", markup=False)

    def _hint(self) -> str:
        return (
            f"A file name, or a folder to write {self.default_names[self.choice]} in. A relative path starts from "
            f"{os.getcwd()}. An existing file is never replaced. Enter writes, Esc cancels."
        )

    def on_mount(self) -> None:
        self.query_one("#error", Static).display = False
        self.query_one("#path", Input).focus()

    def _say(self, problem: str) -> None:
        error = self.query_one("#error", Static)
        error.update(problem)
        error.display = bool(problem)

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        fmt, everything = event.pressed.name.split(":")
        before, self.choice = self.default_names[self.choice], (fmt, everything == "1")
        box = self.query_one("#path", Input)
        if box.value == before:  # still the suggestion: it follows the choice; a typed path is the user's
            box.value = self.default_names[self.choice]
        self.query_one("#hint", Static).update(self._hint())
        box.focus()  # chosen: back to the path, where Enter writes

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if not path:
            self._say("Type a file name, or a folder to export into.")
            return
        self._export(path)

    def _export(self, path: str, create_folder: bool = False) -> None:
        fmt, everything = self.choice
        try:
            written = self.write(path, fmt, everything, create_folder)
        except ExportFolderMissingError as e:
            folder = e.folder

            def answered(yes: bool | None) -> None:
                if yes:
                    self._export(path, create_folder=True)
                else:
                    self._say(f"Not exported: the folder {folder} does not exist.")

            self.app.push_screen(
                ConfirmScreen(
                    f"The folder {folder} does not exist. Create it and export there?", yes="Create"
                ),
                answered,
            )
            return
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            self._say(f"Not exported: {where}{e.strerror or e}.")
            return
        except GPT2TUIError as e:  # the store's and the format's errors: one line saying what is wrong
            self._say(f"Not exported: {e}.")
            return
        self.dismiss(written)
