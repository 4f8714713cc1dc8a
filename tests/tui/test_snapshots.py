"""SVG snapshots of the app's screens (pytest-textual-snapshot). The content is fixed: conversations written to the
store before the app starts, no reply timings, and no timestamps on screen.

    .venv/bin/python -m pytest tests/tui/test_snapshots.py --snapshot-update   # after a deliberate change of looks
"""

from pathlib import Path

import pytest

from gpt2tui.errors import ModelNotFoundError
from gpt2tui.store import ChatStore
from gpt2tui_testkit.tui import loaded, wait_until

SIZE = (100, 32)

REPLY = """A tokenizer turns text into ids. In Python:

```python
ids = tokenizer.encode("Hello")
print(ids)  # [15496]
```

- **BPE** merges frequent pairs
- GPT-2 uses *50,257* tokens"""


@pytest.fixture
def conversations():
    with ChatStore() as store:
        old = store.create("Pears", model="tiny")
        store.append_message(old.id, "user", "And pears?")
        store.append_message(old.id, "assistant", "Pears are pome fruit.", "eos")
        c = store.create("How does a tokenizer work?", model="tiny")
        store.append_message(c.id, "user", "How does a tokenizer work?")
        store.append_message(c.id, "assistant", REPLY, "eos")
        store.append_message(c.id, "user", "Shorter, please.")
        store.append_message(c.id, "assistant", "Text in, ids out", "cancelled")


def test_chat_screen(snap_compare, make_app, conversations):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=loaded)


def test_new_chat(snap_compare, make_app):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=loaded)


def test_settings_screen(snap_compare, make_app, conversations, monkeypatch):
    # The dialog shows where config.toml lives: one path on every run (nothing is written there).
    monkeypatch.setenv("XDG_CONFIG_HOME", "/home/user/.config")

    async def open_settings(pilot):
        await loaded(pilot)
        await pilot.press("ctrl+s")

    assert snap_compare(make_app(seed=7), terminal_size=SIZE, run_before=open_settings)


def test_help_screen(snap_compare, make_app, monkeypatch):
    # The help screen names the terminal it runs in: pin it, so the picture is the same in tmux or kitty.
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TMUX", "STY", "TERM_PROGRAM", "KITTY_WINDOW_ID"):
        monkeypatch.delenv(name, raising=False)

    async def open_help(pilot):
        await loaded(pilot)
        await pilot.press("f1")

    assert snap_compare(make_app(), terminal_size=(100, 40), run_before=open_help)


def test_confirm_delete(snap_compare, make_app, conversations):
    async def ask(pilot):
        await loaded(pilot)
        await pilot.press("f8")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=ask)


def test_no_model_screen(snap_compare, make_app, monkeypatch):
    from gpt2tui import weights

    monkeypatch.setattr(weights, "models_dir", lambda: Path("~/.local/share/gpt2tui/models"))
    monkeypatch.setattr(weights, "local_models", lambda: [])

    def missing():
        raise ModelNotFoundError("gpt2 is not downloaded and the Hub is offline; " + weights.GET_WEIGHTS_HINT)

    app = make_app(loader=missing)
    app.model = "gpt2"

    async def failed(pilot):
        from gpt2tui.tui.screens import NoModelScreen

        await wait_until(pilot, lambda: isinstance(pilot.app.screen, NoModelScreen))

    assert snap_compare(app, terminal_size=(110, 34), run_before=failed)
