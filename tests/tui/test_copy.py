"""Copying any message, or one numbered code block of a reply: through OSC 52 always, and the system clipboard where a
clipboard program is reachable; each copy is confirmed on screen."""

import os
import stat
import sys

from textual.widgets import OptionList

from gpt2tui.store import ChatStore
from gpt2tui.tui import clipboard
from gpt2tui.tui.clipboard import clipboard_command, code_blocks, copy_to_system
from gpt2tui.tui.screens import ChatScreen, CopyScreen
from gpt2tui.tui.widgets.code_block import NumberedFence
from gpt2tui_testkit.tui import loaded, run, wait_until

REPLY = """Two ways:

```python
print("one")
```

and

```sh
echo two
echo three
```
"""


def a_conversation() -> None:
    with ChatStore() as store:
        c = store.create("Code", model="tiny")
        store.append_message(c.id, "user", "Show me code")
        store.append_message(c.id, "assistant", REPLY, "eos")


def fake_clipboard(tmp_path) -> tuple[list[str], object]:
    """A clipboard program that writes what it is given to a file: a real process, run without a shell."""
    target = tmp_path / "clipboard.txt"
    program = tmp_path / "fake-copy"
    program.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(target)!r}, 'wb').write(sys.stdin.buffer.read())\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return [str(program)], target


def test_code_blocks_are_numbered_in_document_order():
    blocks = code_blocks(REPLY + "\n    indented block\n")
    assert [(b.number, b.language, b.code) for b in blocks] == [
        (1, "python", 'print("one")'),
        (2, "sh", "echo two\necho three"),
        (3, "", "indented block"),
    ]
    assert blocks[1].lines == 2
    assert code_blocks("no code here") == []


def test_the_system_clipboard_gets_the_text_when_a_program_is_there(tmp_path, monkeypatch):
    command, target = fake_clipboard(tmp_path)
    assert copy_to_system("héllo\nworld", command) == "fake-copy"
    assert target.read_text(encoding="utf-8") == "héllo\nworld"
    # A failure is no error: the terminal's copy (OSC 52) still stands.
    assert copy_to_system("x", [str(tmp_path / "missing")]) is None
    monkeypatch.setattr(clipboard.sys, "platform", "linux")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert clipboard_command({}) is None  # no display: no X or Wayland clipboard to reach
    (tmp_path / "wl-copy").symlink_to(command[0])
    assert clipboard_command({"WAYLAND_DISPLAY": "wayland-0"}) == [os.path.join(str(tmp_path), "wl-copy")]


def test_copy_a_numbered_code_block_and_a_message(make_app, monkeypatch, tmp_path):
    a_conversation()
    command, target = fake_clipboard(tmp_path)
    monkeypatch.setattr(clipboard, "clipboard_command", lambda: command)
    app = make_app()
    copied = []
    monkeypatch.setattr(app, "copy_to_clipboard", copied.append)  # the OSC 52 write

    async def body():
        async with app.run_test(size=(100, 36)) as pilot:
            await loaded(pilot)
            titles = [str(f.border_title) for f in app.chat.query(NumberedFence)]
            assert titles == ["code 1 · python", "code 2 · sh"]  # the numbers the copy list uses

            await pilot.press("ctrl+t")
            assert isinstance(app.screen, CopyScreen)
            choices = app.screen.query_one(OptionList)
            assert choices.highlighted_option.id == "m2"  # starts on the last reply
            lines = [str(choices.get_option_at_index(i).prompt) for i in range(choices.option_count)]
            assert "code 2 (sh, 2 lines)" in lines[3]
            await pilot.press("down", "down", "enter")  # the reply's second code block
            await wait_until(
                pilot, lambda: any(n.title == "Copied" for n in app._notifications), what="the copy"
            )
            assert isinstance(app.screen, ChatScreen)
            assert copied == ["echo two\necho three"] and target.read_text() == "echo two\necho three"
            note = next(n.message for n in app._notifications if n.title == "Copied")
            assert (
                note.startswith("Copied code block 2 of message 2")
                and "fake-copy" in note
                and "OSC 52" in note
            )

            await pilot.press("ctrl+t")
            await pilot.press("up", "enter")  # the user's message, just above the reply
            await wait_until(pilot, lambda: len(copied) == 2, what="the second copy")
            assert copied[-1] == "Show me code"

            await pilot.press("ctrl+t", "escape")  # cancelled: nothing copied
            await pilot.pause()
            assert len(copied) == 2 and isinstance(app.screen, ChatScreen)

    run(body())


def test_nothing_to_copy_says_so(make_app):
    app = make_app()

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+t")
            assert isinstance(app.screen, ChatScreen)
            assert any("nothing to copy" in n.message for n in app._notifications)

    run(body())
