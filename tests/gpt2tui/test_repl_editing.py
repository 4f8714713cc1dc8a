"""The plain chat's line editor (prompt_toolkit, driven through a pipe input and a DummyOutput): history across runs,
multi-line messages, Ctrl+C at the prompt; and `\"\"\"` blocks read line by line when there is no terminal."""

import io
from contextlib import ExitStack

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from gpt2tui.repl_input import LineEditor, history_path, open_block

UP, ALT_ENTER, CTRL_C, CTRL_D = "\x1b[A", "\x1b\r", "\x03", "\x04"


@pytest.fixture
def typed():
    """`typed(history)`: a line editor reading what the test sends through a pipe."""
    with ExitStack() as stack:

        def make(history):
            pipe = stack.enter_context(create_pipe_input())
            return LineEditor(history, input=pipe, output=DummyOutput()), pipe

        yield make


def test_up_recalls_the_previous_line_also_in_the_next_run(typed, tmp_path):
    history = tmp_path / "history"
    editor, keys = typed(history)
    keys.send_text("first message\r")
    assert editor("you> ") == "first message"
    keys.send_text("second\r")
    assert editor("you> ") == "second"
    keys.send_text(UP + UP + "\r")
    assert editor("you> ") == "first message"
    later, keys = typed(history)  # a new run: the history came from the file
    keys.send_text(UP + UP + "\r")  # the recalled line was stored again, last: "second" is one further back
    assert later("you> ") == "second"


def test_the_history_file_sits_beside_the_chat_database(isolated_home):
    assert history_path() == isolated_home / "xdg" / "gpt2tui" / "repl-history"


def test_alt_enter_and_an_open_fence_make_new_lines_enter_sends(typed, tmp_path):
    editor, keys = typed(tmp_path / "h")
    keys.send_text("one" + ALT_ENTER + "two\r")
    assert editor("you> ") == "one\ntwo"
    keys.send_text('"""\rline a\rline b"""\r')
    assert editor("you> ") == '"""\nline a\nline b"""'


def test_ctrl_c_clears_the_line_and_ctrl_d_leaves(typed, tmp_path):
    editor, keys = typed(tmp_path / "h")
    keys.send_text("half a thought" + CTRL_C + "fresh\r")
    assert editor("you> ") == "fresh"
    keys.send_text(CTRL_C + "still here\r")  # on an empty line it only says how to leave
    assert editor("you> ") == "still here"
    keys.send_text(CTRL_D)
    with pytest.raises(EOFError):
        editor("you> ")


def test_a_history_that_cannot_be_written_does_not_stop_the_chat(typed, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder belongs")
    editor, keys = typed(blocker / "history")
    keys.send_text("hello\r")
    assert editor("you> ") == "hello"


@pytest.mark.parametrize("text, is_open", [
    ('"""', True), ('"""first line', True), ('"""a\nb"""', False), ('"""one line"""', False), ("plain", False),
])
def test_open_block(text, is_open):
    assert open_block(text) is is_open


def test_a_fenced_block_is_one_message_from_a_pipe_too(hf_small_dir):
    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    lines = iter(['"""', "Line one", "Line two", '"""', "After"])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    session = ChatSession.load(str(hf_small_dir))
    with ChatStore() as store:
        assert Repl(session, store, ChatSettings(max_new_tokens=2), read=read, out=io.StringIO()).run() == 0
        users = [m.content for m in store.get(1).messages if m.role == "user"]
    assert users == ["Line one\nLine two", "After"]


def test_flags_win_over_a_saved_conversations_settings_in_the_plain_chat(hf_small_dir):
    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    session = ChatSession.load(str(hf_small_dir))
    with ChatStore() as store:
        store.create("Saved", "m", ChatSettings(temperature=0.9, top_k=3).to_dict())
        lines = iter(["/open 1"])

        def read(prompt):
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None

        repl = Repl(session, store, ChatSettings(), read=read, out=io.StringIO(), overrides={"top_k": 11})
        assert repl.run() == 0
    assert (session.settings.temperature, session.settings.top_k) == (0.9, 11)


def test_regen_keeps_the_old_reply_as_a_branch(hf_small_dir):
    from gpt2tui.repl import Repl
    from gpt2tui.session import ChatSession, ChatSettings
    from gpt2tui.store import ChatStore

    lines = iter(["Hello", "/regen"])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    session = ChatSession.load(str(hf_small_dir))
    with ChatStore() as store:
        assert Repl(session, store, ChatSettings(max_new_tokens=2), read=read, out=io.StringIO()).run() == 0
        conversation = store.get(1)
        path = conversation.messages
        assert [m.role for m in path] == ["user", "assistant"]
        assert [m.id for m in conversation.siblings(path[-1].id)] == [path[-1].id - 1, path[-1].id]
