"""The plain chat's line editor, in a terminal: prompt_toolkit's editing (arrows, Home/End, Ctrl+A/E/K/W...), history
across runs (Up recalls the previous message, also one from an earlier run), and multi-line messages.

- Enter sends. Alt+Enter (Esc then Enter, which every terminal sends) starts a new line.
- A message that opens with `\"\"\"` goes on over several lines until one ends with `\"\"\"`; Enter makes new lines
  until then.
- Ctrl+C clears the line; on an empty line it says how to leave (Ctrl+D or /quit). While a reply streams, Ctrl+C
  stops it: that is the REPL's business (Python's KeyboardInterrupt), not the editor's.

Without a terminal (a pipe, a test), the REPL reads plain lines and never builds this.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import Output

from .model_files import data_dir

FENCE = '"""'
CONTINUATION = "...  "
QUIT_HINT = "(Ctrl+D or /quit leaves; Ctrl+C stops a reply)"


def history_path() -> Path:
    """Where the messages typed in the plain chat are kept between runs, beside the chat database."""
    return data_dir() / "repl-history"


def open_block(text: str) -> bool:
    """Whether `text` opens a `\"\"\"` block that is not closed yet: Enter then makes a new line instead of sending."""
    stripped = text.lstrip()
    if not stripped.startswith(FENCE):
        return False
    rest = stripped[len(FENCE) :]
    return not rest.rstrip().endswith(FENCE)


class _History(FileHistory):
    """A history file whose writes may fail: history is a convenience, and a read-only or full disk must not stop
    the chat (the session keeps it in memory until the end)."""

    def store_string(self, string: str) -> None:
        try:
            super().store_string(string)
        except OSError:
            pass


def _history(path: Path | None):
    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return _History(os.fspath(path))


def _say_how_to_quit() -> None:
    print(QUIT_HINT, file=sys.stderr)  # stderr, as everything but replies


def _key_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("enter")
    def _enter(event) -> None:
        buffer = event.current_buffer
        if open_block(buffer.text):
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @kb.add("escape", "enter")  # Alt+Enter: terminals send it as Esc, then Enter
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("c-c")
    def _clear(event) -> None:
        buffer = event.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            run_in_terminal(_say_how_to_quit)  # above the prompt, which is drawn again below it

    return kb


class LineEditor:
    """`editor(prompt) -> str`, as `input()` is, with editing, history and multi-line messages. Raises `EOFError` on
    Ctrl+D at an empty prompt. `input`/`output` are prompt_toolkit's (tests pass a pipe input and a DummyOutput)."""

    def __init__(
        self,
        history: Path | None = None,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.session: PromptSession[str] = PromptSession(
            history=_history(history),
            key_bindings=_key_bindings(),
            multiline=True,  # Enter is ours (above): it sends unless a block is open
            prompt_continuation=lambda width, line_number, wrap_count: CONTINUATION.rjust(width),
            input=input,
            output=output,
        )

    def __call__(self, prompt: str = "") -> str:
        return self.session.prompt(prompt)
