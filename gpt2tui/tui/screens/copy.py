"""Pick what to copy: any message of the conversation, or one of a reply's numbered code blocks."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..clipboard import code_blocks

PREVIEW = 60  # characters of a message shown in the list


@dataclass(frozen=True)
class Copied:
    """What the user picked: the text, and how the confirmation names it."""

    text: str
    what: str


def _preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PREVIEW else line[: PREVIEW - 1] + "…"


class CopyScreen(ModalScreen[Copied | None]):
    """`messages`: (role, author, content) in order; `selected`: the index of the message to start on."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, messages: list[tuple[str, str, str]], selected: int | None = None) -> None:
        super().__init__()
        self.messages = messages
        self.selected = selected
        self.choices: dict[str, Copied] = {}

    def compose(self) -> ComposeResult:
        options: list[Option] = []
        for i, (role, author, content) in enumerate(self.messages, start=1):
            key = f"m{i}"
            self.choices[key] = Copied(content, f"message {i} ({author})")
            options.append(Option(f"{i:>3}  {author}: {_preview(content) or '(empty)'}", id=key))
            if role != "assistant":
                continue
            for block in code_blocks(content):
                key = f"m{i}c{block.number}"
                self.choices[key] = Copied(block.code, f"code block {block.number} of message {i}")
                kind = f"{block.language}, " if block.language else ""
                lines = f"{block.lines} line" + ("" if block.lines == 1 else "s")
                options.append(
                    Option(f"       code {block.number} ({kind}{lines}): {_preview(block.code)}", id=key)
                )
        with Vertical(id="dialog"):
            yield Static("Copy", classes="dialog-title")
            yield OptionList(*options, id="choices")
            yield Static(
                "Enter copies the message or code block (numbered as in the reply), Esc cancels.",
                classes="dialog-hint",
            )

    def on_mount(self) -> None:
        choices = self.query_one(OptionList)
        if self.selected is not None and 0 <= self.selected < len(self.messages):
            choices.highlighted = choices.get_option_index(f"m{self.selected + 1}")
        elif choices.option_count:
            choices.highlighted = choices.option_count - 1
        choices.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.choices.get(event.option.id or ""))
