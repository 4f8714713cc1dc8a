"""A key-echo harness on the chat app's own message box, for driving it inside a real terminal (tmux):

    python -m gpt2tui_testkit.key_echo OUT.jsonl

Each line of OUT is a JSON object: {"ready": true} once the box has focus, {"sent": TEXT} for each message Enter
sent, and {"text": TEXT} with what the box holds after each change.
"""

from __future__ import annotations

import json
import sys

from textual.app import App, ComposeResult

from gpt2tui.tui.widgets import PromptInput


class KeyEcho(App[None]):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def record(self, **entry) -> None:
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def compose(self) -> ComposeResult:
        yield PromptInput(id="prompt")

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        self.call_after_refresh(self.record, ready=True)

    def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        self.record(sent=event.text)
        event.prompt_input.clear()

    def on_text_area_changed(self, event: PromptInput.Changed) -> None:
        self.record(text=event.text_area.text)


if __name__ == "__main__":
    KeyEcho(sys.argv[1]).run()
