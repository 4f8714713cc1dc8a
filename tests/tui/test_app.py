"""The chat app end to end, headless: streaming, stopping, saving, the sidebar's actions, settings, bad input."""

import subprocess
import sys
from pathlib import Path

from textual.widgets import DataTable, Input, OptionList

from gpt2tui.errors import CheckpointError
from gpt2tui.session import ChatSession, ChatSettings
from gpt2tui.store import ChatStore, default_path
from gpt2tui.tui.keys import ALL_KEYS
from gpt2tui.tui.screens import (
    ChatScreen,
    ConfirmScreen,
    ExportScreen,
    HelpScreen,
    NoModelScreen,
    RenameScreen,
    SettingsScreen,
)
from gpt2tui.tui.screens import chat as chat_screen
from gpt2tui.tui.widgets import MessageList, MessageView, StatusBar
from gpt2tui_testkit.tui import MODEL_NAME, loaded, reply_done, run, send, wait_until


def views(app) -> list[MessageView]:
    return list(app.chat.query(MessageView))


def saved(conversation_id: int = 1) -> list[dict]:
    with ChatStore() as store:
        return [m.to_chat() for m in store.get(conversation_id).messages]


def test_importing_the_app_does_not_import_torch():
    code = "import gpt2tui.tui.app, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_reply_streams_in_and_is_saved(make_app, monkeypatch):
    monkeypatch.setattr(chat_screen, "SHOW_INTERVAL", 0.0)  # every token its own message, to see them arrive
    deltas = []
    app = make_app(max_new_tokens=24, seed=1)

    async def body():
        async with app.run_test(size=(100, 30), message_hook=lambda m: deltas.append(m)) as pilot:
            await loaded(pilot)
            await send(pilot, "Hello there")
            await reply_done(pilot)
            user, bot = views(app)
            reply = app.session.last_stats
            assert (user.role, user.content) == ("user", "Hello there")
            shown = [m.text for m in deltas if isinstance(m, ChatScreen.ReplyDelta)]
            assert len(shown) > 1 and "".join(shown) == bot.content != ""
            assert reply.finish_reason == "max_tokens" and reply.new_tokens == 24
            assert "cut off: max new tokens" in str(bot.query_one(".finish").render())
            status = app.chat.query_one(StatusBar)
            assert status.tokens_per_s == reply.tokens_per_s and status.context_used == reply.context_used
            assert app.chat.query_one("#chat-title").render().plain == "Hello there"  # titled by its first message
            assert saved() == [
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": bot.content, "finish_reason": "max_tokens"},
            ]

    run(body())


def test_escape_stops_a_long_reply_and_the_next_message_works(make_app):
    app = make_app(max_new_tokens=400)

    async def body():
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(pilot)
            await send(pilot, "Tell me a long story")
            await wait_until(pilot, lambda: app.chat.reply_view is not None and app.chat.reply_view.content,
                             what="the first text")
            await pilot.press("escape")
            await reply_done(pilot)
            bot = views(app)[-1]
            stats = app.session.last_stats
            assert stats.finish_reason == "cancelled" and stats.new_tokens < 400
            assert bot.has_class("stopped") and "[stopped]" in str(bot.query_one(".finish").render())
            assert saved()[-1] == {"role": "assistant", "content": bot.content, "finish_reason": "cancelled"}
            assert app.chat.query_one(StatusBar).state == "Stopped"

            app.session.settings = app.session.settings.replace(max_new_tokens=5)
            await send(pilot, "And then?")
            await reply_done(pilot)
            assert app.session.last_stats.finish_reason == "max_tokens"
            assert [m["role"] for m in saved()] == ["user", "assistant", "user", "assistant"]
            assert [v.role for v in views(app)] == ["user", "assistant", "user", "assistant"]

    run(body())


def test_conversations_survive_a_restart(make_app):
    async def first():
        app = make_app(max_new_tokens=8)
        async with app.run_test() as pilot:
            await loaded(pilot)
            await send(pilot, "Remember me")
            await reply_done(pilot)
            shown = [(v.role, v.content) for v in views(app)]
            await pilot.press("ctrl+q")
        return shown

    async def second(before):
        app = make_app()
        async with app.run_test() as pilot:
            await loaded(pilot)
            assert [(v.role, v.content) for v in views(app)] == before
            assert app.session.messages == [{"role": r, "content": c} for r, c in before]
            options = app.chat.query_one("#conversations", OptionList)
            assert options.option_count == 1 and str(options.get_option_at_index(0).prompt) == "Remember me"
            await send(pilot, "Still there?")  # the restored conversation goes on
            await reply_done(pilot)
            assert len(saved()) == 4

    run(second(run(first())))


def test_quitting_mid_reply_saves_the_partial_reply(make_app):
    app = make_app(max_new_tokens=400)

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            await send(pilot, "Go on and on")
            await wait_until(pilot, lambda: app.chat.reply_view is not None and app.chat.reply_view.content)
            await pilot.press("ctrl+q")
        last = saved()[-1]
        assert last["finish_reason"] == "cancelled" and last["content"] == app.session.messages[-1]["content"] != ""

    run(body())


def _two_conversations():
    with ChatStore() as store:
        for title, text in (("Apples", "Tell me about apples"), ("Pears", "And pears?")):
            c = store.create(title, model=MODEL_NAME)
            store.append_message(c.id, "user", text)
            store.append_message(c.id, "assistant", f"Some words on {title.lower()}.", "eos")


def test_a_conversation_another_instance_writes_is_read_only_here(make_app):
    _two_conversations()
    other = ChatStore()
    assert other.claim(2)  # another gpt2tui has "Pears" open
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(pilot)
            assert app.chat.conversation_id == 2
            assert any("open in another gpt2tui" in n.message and "read-only" in n.message for n in app._notifications)
            await send(pilot, "Mine now?")
            await pilot.pause()
            assert any("could not be saved" in n.message and "open in another gpt2tui" in n.message
                       for n in app._notifications)
            assert app.chat.reply is None and len(app.store.get(2).messages) == 2  # nothing written over the other's

    try:
        run(body())
    finally:
        other.close()


def test_delete_asks_first_then_opens_the_next_conversation(make_app):
    _two_conversations()
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(pilot)
            assert app.chat.conversation_title == "Pears"  # the most recent opens
            await pilot.press("f8")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert isinstance(app.screen, ChatScreen)
            assert [c.title for c in ChatStore().conversations()] == ["Pears", "Apples"]
            await pilot.press("f8")
            await pilot.press("y")
            await pilot.pause()
            assert [c.title for c in ChatStore().conversations()] == ["Apples"]
            assert app.chat.conversation_title == "Apples" and views(app)[0].content == "Tell me about apples"
            assert app.chat.query_one("#conversations", OptionList).option_count == 1

    run(body())


def test_rename_search_and_switch(make_app):
    _two_conversations()
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(pilot)
            await pilot.press("f2")
            assert isinstance(app.screen, RenameScreen)
            app.screen.query_one(Input).value = ""
            await pilot.press(*"Fruit", "enter")
            await pilot.pause()
            assert ChatStore().get(2).title == "Fruit" and app.chat.query_one("#chat-title").render().plain == "Fruit"

            await pilot.press("ctrl+f")
            await pilot.press(*"apples")  # a message's text, not a title
            await pilot.pause()
            options = app.chat.query_one("#conversations", OptionList)
            assert options.option_count == 1 and str(options.get_option_at_index(0).prompt) == "Apples"
            await pilot.press("enter", "enter")  # to the list, then open the highlighted one
            await pilot.pause()
            assert app.chat.conversation_id == 1 and views(app)[0].content == "Tell me about apples"
            assert app.session.messages[0]["content"] == "Tell me about apples"

    run(body())


def _fill_the_disk(store) -> None:
    store._db.execute(f"PRAGMA max_page_count={store._db.execute('PRAGMA page_count').fetchone()[0]}")


def test_a_full_disk_while_chatting_keeps_the_reply_and_writes_it_once_there_is_space(make_app):
    app = make_app(max_new_tokens=4)
    long_message = "Tell me about the lighthouse. " * 300

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            _fill_the_disk(app.store)
            await send(pilot, long_message)
            await reply_done(pilot)
            notes = [n.message for n in app._notifications]
            assert any("Disk full:" in m and "your reply is kept until you free space" in m for m in notes), notes
            views = app.chat.query_one(MessageList).views
            assert [v.role for v in views] == ["user", "assistant"] and views[1].content  # on screen, in memory
            assert app.chat.unsaved and all(not app.store.get(c.id).messages for c in app.store.conversations())
            await pilot.press("ctrl+n")  # leaving would lose it: refused, and said why
            await pilot.pause()
            assert app.chat.query_one(MessageList).views and any("not saved yet" in n.message
                                                                  for n in app._notifications)
            app.store._db.execute("PRAGMA max_page_count=1073741823")  # space again
            app.chat.catch_up()  # what the app's timer does every few seconds
            (conversation,) = app.store.conversations()
            stored = [m.to_chat() for m in app.store.get(conversation.id).messages]
            assert stored == app.chat.session.messages and stored[0]["content"] == long_message.strip()
            assert app.chat.unsaved is None and app.chat.conversation_id == conversation.id

    run(body())


def test_quitting_while_the_disk_is_still_full_says_what_is_lost(make_app):
    app = make_app(max_new_tokens=2)

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            _fill_the_disk(app.store)
            await send(pilot, "x" * 9000)
            await reply_done(pilot)
            await pilot.press("ctrl+q")
            await pilot.pause()

    run(body())
    assert app.return_code == 1


def test_the_app_starts_when_the_history_cannot_be_saved(make_app, tmp_path, monkeypatch):
    """A data folder that cannot be made (a file stands where it goes; or no permission): the app says where, and the
    chat works, kept in memory."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocker / "data"))
    app = make_app()

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            assert app.store.in_memory
            notes = [n.message for n in app._notifications]
            assert any(str(blocker / "data" / "gpt2tui") in m and "kept only until you quit" in m for m in notes), notes
            await send(pilot, "Hello")
            await reply_done(pilot)
            assert [m.role for m in app.store.get(app.chat.conversation_id).messages] == ["user", "assistant"]

    run(body())
    assert blocker.read_text() == ""


def test_the_app_starts_in_a_data_folder_it_may_not_write(make_app, tmp_path, monkeypatch):
    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    app = make_app()

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            assert app.store.in_memory and any("Permission denied" in n.message for n in app._notifications)

    run(body())


def test_export_to_the_current_directory_or_a_given_path(make_app, tmp_path, monkeypatch):
    _two_conversations()
    monkeypatch.chdir(tmp_path)
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+o")
            assert isinstance(app.screen, ExportScreen)
            await pilot.press("enter")
            await pilot.pause()
            written = tmp_path / "pears-2.md"
            assert written.read_text().startswith("# Pears\n") and "## User\n\nAnd pears?" in written.read_text()
            assert any(str(written) in n.message for n in app._notifications)

            # A folder that does not exist is named, and made only once the user says so.
            await pilot.press("ctrl+o")
            app.screen.query_one(Input).value = str(tmp_path / "sub" / "mine.md")
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen) and str(tmp_path / "sub") in app.screen.question
            await pilot.press("n")
            await pilot.pause()
            assert not (tmp_path / "sub").exists()
            await pilot.press("ctrl+o")
            app.screen.query_one(Input).value = str(tmp_path / "sub" / "mine.md")
            await pilot.press("enter")
            await pilot.pause()
            await pilot.press("y")
            await pilot.pause()
            assert "Some words on pears." in (tmp_path / "sub" / "mine.md").read_text()

            # A folder, with or without its separator: the default name inside it.
            await pilot.press("ctrl+o")
            app.screen.query_one(Input).value = "sub/"
            await pilot.press("enter")
            await pilot.pause()
            assert (tmp_path / "sub" / "pears-2.md").read_text().startswith("# Pears\n")

            # A NUL byte in the path is said in the dialog, the path kept to be corrected, and the app goes on.
            await pilot.press("ctrl+o")
            app.screen.query_one(Input).value = "a\x00b.md"
            await pilot.press("enter")
            await pilot.pause()
            assert "NUL byte" in str(app.screen.query_one("#error").render())
            assert app.screen.query_one(Input).value == "a\x00b.md"
            await pilot.press("escape")
            assert app.is_running and app.screen is app.chat

    run(body())


def test_copy_the_last_reply(make_app, monkeypatch):
    _two_conversations()
    app = make_app()
    copied = []
    monkeypatch.setattr(app, "copy_to_clipboard", copied.append)

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+l")
            assert copied == ["Some words on pears."]

    run(body())


def test_settings_are_checked_saved_and_change_what_generation_gets(make_app, tiny_model, tokenizer):
    _two_conversations()
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 34)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, SettingsScreen)
            app.screen.query_one("#temperature", Input).value = "-1"
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, SettingsScreen)  # refused, with the reason
            assert "Temperature must be 0 to 2; got -1" in str(app.screen.query_one("#error").render())
            app.screen.query_one("#temperature", Input).value = "0"
            app.screen.query_one("#max_new_tokens", Input).value = "3"
            app.screen.query_one("#seed", Input).value = ""
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            want = ChatSettings(temperature=0.0, max_new_tokens=3)
            assert ChatStore().get(2).settings == want.to_dict() and app.session.settings == want

            await send(pilot, "Count to three")
            await reply_done(pilot)
            assert app.session.last_stats.new_tokens == 3
            # The same conversation, settings and message outside the app give the same greedy reply.
            twin = ChatSession(tiny_model, tokenizer, settings=want, messages=saved(2)[:2])
            assert "".join(twin.reply("Count to three")) == views(app)[-1].content

    run(body())


def test_regenerate_replaces_the_last_reply(make_app):
    app = make_app(max_new_tokens=6)

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            await send(pilot, "Once")
            await reply_done(pilot)
            await pilot.press("ctrl+r")
            await reply_done(pilot)
            assert [v.role for v in views(app)] == ["user", "assistant"]
            assert [m["role"] for m in saved()] == ["user", "assistant"]
            assert saved()[-1]["content"] == views(app)[-1].content

    run(body())


def test_empty_message_is_ignored_and_ctrl_j_breaks_the_line(make_app):
    app = make_app(max_new_tokens=4)

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            await pilot.press("space", "space", "enter")
            await pilot.pause()
            assert views(app) == [] and ChatStore().conversations() == []
            await pilot.press("a", "ctrl+j", "b", "shift+enter", "c", "enter")
            await reply_done(pilot)
            assert views(app)[0].content == "a\nb\nc"

    run(body())


def test_a_message_longer_than_the_window_is_cut_with_a_notice(make_app):
    app = make_app(max_new_tokens=4)

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            await send(pilot, "word " * 1500)
            await reply_done(pilot)
            notice = str(views(app)[-1].query_one(".notice").render())
            assert "your message was too long" in notice and "tokens were cut" in notice
            assert any("too long" in n.message for n in app._notifications)
            assert saved()[0]["content"] == ("word " * 1500).strip()  # the store keeps it whole

    run(body())


def test_a_corrupt_database_is_moved_aside_with_a_warning(make_app):
    path = default_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    app = make_app(max_new_tokens=3)

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            assert any("moved it to" in n.message for n in app._notifications)
            await send(pilot, "Fresh start")
            await reply_done(pilot)
        assert len(list(path.parent.glob("chats.db.corrupt-*"))) == 1 and len(saved()) == 2

    run(body())


def test_without_a_model_the_app_says_how_to_get_one(tmp_path):
    from gpt2tui.tui import ChatApp

    app = ChatApp("gpt2")  # not cached, and the tests are offline

    async def body():
        async with app.run_test(size=(110, 34)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, NoModelScreen), what="the no-model screen")
            text = " ".join(str(w.render()) for w in app.screen.query("Static"))
            for words in ("No model to chat with: gpt2", "not downloaded", "gpt2tui download gpt2", "--model PATH",
                          "gpt2tui finetune / gpt2tui pretrain"):
                assert words in text
            await pilot.press("escape")  # the saved conversations stay readable
            assert isinstance(app.screen, ChatScreen)
            await send(pilot, "Anyone?")
            await pilot.pause()
            assert views(app) == [] and any("No model is loaded" in n.message for n in app._notifications)
            await pilot.press("ctrl+q")
        assert app.return_code == 0

    run(body())


def test_a_model_that_fails_to_load_shows_its_error(make_app):
    def broken():
        raise CheckpointError("model.safetensors is truncated or corrupt")

    app = make_app(loader=broken)

    async def body():
        async with app.run_test(size=(110, 34)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, NoModelScreen), what="the error screen")
            text = " ".join(str(w.render()) for w in app.screen.query("Static"))
            assert "could not be loaded" in text and "truncated or corrupt" in text
            await pilot.press("q")
        assert app.return_code == 0

    run(body())


def test_help_lists_every_key_and_the_palette_runs_actions(make_app):
    _two_conversations()
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            table = app.screen.query_one(DataTable)
            rows = {str(table.get_row_at(i)[0]) for i in range(table.row_count)}
            assert {k.label for k in ALL_KEYS} <= rows
            await pilot.press("escape")
            await pilot.press("ctrl+p")
            await pilot.press(*"export the conversation")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ExportScreen), what="the palette's action")

    run(body())


def test_the_chat_command_starts_the_app_in_a_terminal_and_the_repl_otherwise(monkeypatch):
    from gpt2tui import cli

    started = []
    monkeypatch.setattr(cli, "_run_app", lambda args: started.append(args) or 0)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert cli.main([]) == 0 and cli.main(["chat", "--temperature", "0.3"]) == 0
    assert len(started) == 2 and cli.chat_defaults(started[1]) == {"temperature": 0.3}
    assert not Path("chats.db").exists()
