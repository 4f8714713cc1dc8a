"""The message box's keys in a real terminal: the app's own PromptInput inside tmux, keys sent with `tmux send-keys`.
The key table says, per terminal, which keys break the line; this checks it says the truth about tmux."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gpt2tui.tui.keys import newline_keys, newline_note, terminal_name

TMUX = shutil.which("tmux")
SUPPORT = Path(__file__).resolve().parents[1] / "support"
ROOT = Path(__file__).resolve().parents[2]


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def wait_for(out: Path, condition, what: str, timeout: float = 30.0) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entries = read(out)
        if condition(entries):
            return entries
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; got {read(out)}")


def test_the_key_table_per_terminal():
    assert terminal_name({"TMUX": "/tmp/tmux-0/default,1,0", "TERM": "screen-256color"}) == "tmux"
    assert terminal_name({"TERM": "xterm-kitty"}) == "kitty"
    assert newline_keys({"TMUX": "x", "TERM": "tmux-256color"}) == ["Ctrl+J"]
    assert newline_keys({"TERM": "foot"}) == ["Ctrl+J", "Shift+Enter", "Alt+Enter"]
    assert "Alt+Enter arrive as Enter and send" in newline_note({"TMUX": "x"})


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_in_tmux_ctrl_j_breaks_the_line_and_alt_enter_sends_as_the_key_table_says(tmp_path):
    out = tmp_path / "keys.jsonl"
    server = f"gpt2tui-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SUPPORT), str(ROOT)]), TERM="xterm-256color")
    command = f"{sys.executable} -m gpt2tui_testkit.key_echo {out}"

    def tmux(*args: str) -> None:
        subprocess.run([TMUX, "-L", server, *args], check=True, env=env, cwd=ROOT, timeout=30)

    tmux("-f", os.devnull, "new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", command)
    try:
        wait_for(out, lambda e: {"ready": True} in e, "the harness to start")
        # Keys one at a time, each given time to arrive alone, as a person types them.
        for keys in (["a"], ["M-Enter"], ["b"], ["C-j"], ["c"]):
            tmux("send-keys", "-t", "chat", *keys)
            time.sleep(0.4)
        entries = wait_for(out, lambda e: {"text": "b\nc"} in e or len(e) > 8, "the last key")
    finally:
        subprocess.run([TMUX, "-L", server, "kill-server"], capture_output=True, env=env, timeout=30)
    sent = [x["sent"] for x in entries if "sent" in x]
    text = [x["text"] for x in entries if "text" in x][-1]
    in_tmux = {"TMUX": "1", "TERM": "screen"}
    # Ctrl+J: a new line in tmux, as the table says.
    assert "Ctrl+J" in newline_keys(in_tmux) and text == "b\nc"
    # Alt+Enter: tmux passes ESC + Enter, which arrives as Enter: it sends, and the table says so for tmux.
    assert "Alt+Enter" not in newline_keys(in_tmux) and sent == ["a"]
