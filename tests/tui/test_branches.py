"""Edit, resend and branch in the app, driven through Pilot; and the export and import dialogs."""

import json

from textual.widgets import Input, RadioButton

from gpt2tui.store import ChatStore
from gpt2tui.transfer import conversation_record, export_file
from gpt2tui.tui.screens import ChatScreen, ConfirmScreen, ExportScreen, ImportScreen
from gpt2tui.tui.widgets import MessageList, MessageView, PromptInput
from gpt2tui_testkit.tui import MODEL_NAME, loaded, reply_done, run, wait_until

TURNS = [
    ("user", "First question"),
    ("assistant", "First answer"),
    ("user", "Second question"),
    ("assistant", "Second answer"),
    ("user", "Third question"),
    ("assistant", "Third answer"),
]


def three_turns() -> int:
    with ChatStore() as store:
        c = store.create("Three turns", model=MODEL_NAME)
        for role, text in TURNS:
            store.append_message(c.id, role, text, "eos" if role == "assistant" else None)
        return c.id


def views(app) -> list[MessageView]:
    return app.chat.query_one(MessageList).views


def shown(app) -> list[str]:
    return [v.content for v in views(app)]


def author(view: MessageView) -> str:
    return str(view.query_one(".author").render())


async def select(pilot, index: int) -> MessageView:
    """Focus the conversation and move the selection with the arrow keys, as a user does."""
    app = pilot.app
    message_list = app.chat.query_one(MessageList)
    message_list.focus()
    await pilot.pause()
    current = views(app).index(message_list.selected)
    for _ in range(abs(index - current)):
        await pilot.press("up" if index < current else "down")
    assert message_list.selected is views(app)[index]
    return message_list.selected


def test_edit_the_second_message_resend_and_switch_back_to_the_old_branch(make_app):
    cid = three_turns()
    app = make_app(max_new_tokens=4, temperature=0)

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            prompt = app.chat.query_one(PromptInput)
            prompt.insert("a draft I was typing")
            await pilot.press(
                "shift+tab"
            )  # from the message box to the conversation: the last message selected
            message_list = app.chat.query_one(MessageList)
            assert message_list.has_focus and message_list.selected is views(app)[-1]
            await select(pilot, 2)
            await pilot.press("enter")
            assert (
                prompt.has_focus
                and prompt.text == "Second question"
                and "Editing" in str(prompt.border_title)
            )
            assert views(app)[2].has_class("editing")

            prompt.load_text("Second question, edited")
            await pilot.press("enter")
            await reply_done(pilot)
            assert shown(app)[:3] == ["First question", "First answer", "Second question, edited"]
            assert len(views(app)) == 4 and views(app)[3].content  # the new reply
            assert (
                prompt.text == "a draft I was typing" and prompt.border_title is None
            )  # the draft came back
            assert "2/2" in author(views(app)[2])
            conversation = app.store.get(cid)
            assert len(conversation.nodes) == 8
            assert [m.content for m in conversation.messages] == shown(app)
            # The prompt was the new path only: the old continuation is not in the session.
            assert [m["content"] for m in app.session.messages] == shown(app)

            await select(pilot, 2)
            await pilot.press("left")  # back to the old branch, whole
            await pilot.pause()
            assert shown(app) == [text for _, text in TURNS]
            assert (
                "1/2" in author(views(app)[2]) and app.chat.query_one(MessageList).selected is views(app)[2]
            )
            assert [m["content"] for m in app.session.messages] == [text for _, text in TURNS]
            assert [m.content for m in app.store.get(cid).messages] == [text for _, text in TURNS]
            await pilot.press("left")  # already the first: nothing changes
            assert shown(app) == [text for _, text in TURNS]
            await pilot.press("right")
            await pilot.pause()
            assert shown(app)[2] == "Second question, edited" and len(views(app)) == 4

    run(body())


def test_regenerate_keeps_the_earlier_reply_as_an_alternative(make_app):
    cid = three_turns()
    app = make_app(max_new_tokens=4, temperature=0)

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+r")
            await reply_done(pilot)
            assert shown(app)[:5] == [text for _, text in TURNS][:5] and shown(app)[5] != "Third answer"
            assert "2/2" in author(views(app)[5])
            await select(pilot, 5)
            await pilot.press("left")
            await pilot.pause()
            assert shown(app)[5] == "Third answer" and "1/2" in author(views(app)[5])

            # On a selected earlier reply, Ctrl+R writes a new one beside it; what came after stays on the old branch.
            await select(pilot, 1)
            await pilot.press("ctrl+r")
            await reply_done(pilot)
            assert (
                shown(app)[0] == "First question" and len(views(app)) == 2 and "2/2" in author(views(app)[1])
            )
            conversation = app.store.get(cid)
            assert (
                len(conversation.siblings(conversation.messages[1].id)) == 2 and len(conversation.nodes) == 8
            )

    run(body())


def test_escape_cancels_an_edit_and_assistant_messages_are_not_edited(make_app):
    three_turns()
    app = make_app(max_new_tokens=4)

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            prompt = app.chat.query_one(PromptInput)
            prompt.insert("keep me")
            await select(pilot, 1)
            await pilot.press("enter")  # a reply: not editable, and said how to get another
            assert any("Ctrl+R" in n.message for n in app._notifications) and prompt.text == "keep me"
            await select(pilot, 0)
            await pilot.press("e")
            assert prompt.text == "First question"
            await pilot.press("escape")
            assert (
                prompt.text == "keep me"
                and app.chat.editing is None
                and not views(app)[0].has_class("editing")
            )
            assert len(app.store.get(1).nodes) == 6  # nothing written

    run(body())


def test_a_click_selects_a_message(make_app):
    three_turns()
    app = make_app()

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            target = views(app)[-2]
            app.chat.query_one(MessageList).scroll_to_widget(target, animate=False)
            await pilot.pause()
            await pilot.click(target.query_one(".author"))
            message_list = app.chat.query_one(MessageList)
            assert message_list.has_focus and message_list.selected is target

    run(body())


def test_export_all_as_json_and_import_it_into_a_fresh_data_directory(make_app, tmp_path, monkeypatch):
    cid = three_turns()
    with ChatStore() as store:
        store.append_message(cid, "user", "Second question, edited", parent_id=store.get(cid).messages[1].id)
        store.append_message(cid, "assistant", "Another answer", "eos")
        before = conversation_record(store.get(cid))
    monkeypatch.chdir(tmp_path)
    app = make_app()

    async def export():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+o")
            assert isinstance(app.screen, ExportScreen)
            box = app.screen.query_one(Input)
            assert box.value == "three-turns-1.md"
            await pilot.click(
                app.screen.query(RadioButton)[3]
            )  # every conversation, JSON: the suggestion follows
            assert box.value == "chats.json"
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is app.chat and any("chats.json" in n.message for n in app._notifications)

    run(export())
    written = tmp_path / "chats.json"
    assert json.loads(written.read_text())["conversations"][0]["nodes"][-1]["content"] == "Another answer"

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "fresh"))
    fresh = make_app()

    async def import_it():
        async with fresh.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("f5")
            assert isinstance(fresh.screen, ImportScreen)
            (tmp_path / "bad.json").write_text('[{"messages": [{"role": "assistant", "content": "hi"}]}]')
            box = fresh.screen.query_one(Input)
            box.value = "bad.json"
            await pilot.press("enter")
            await pilot.pause()
            error = str(fresh.screen.query_one("#error").render())
            assert isinstance(fresh.screen, ImportScreen) and box.value == "bad.json"  # kept, to be corrected
            assert "[0].messages[0].role" in error and "where 'user' was expected" in error
            assert fresh.store.conversations() == []
            box.value = "chats.json"
            await pilot.press("enter")
            await wait_until(
                pilot, lambda: fresh.chat.conversation_id == cid, what="the imported conversation"
            )
            assert shown(fresh)[-1] == "Another answer" and "2/2" in author(views(fresh)[2])
            assert conversation_record(fresh.store.get(cid)) == before  # the same tree

    run(import_it())


def test_a_failed_export_keeps_the_typed_path_and_names_the_folder(make_app, tmp_path, monkeypatch):
    three_turns()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep")
    app = make_app()

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+o")
            box = app.screen.query_one(Input)
            box.value = "afile/notes.md"
            await pilot.press("enter")
            await pilot.pause()
            error = str(app.screen.query_one("#error").render())
            assert isinstance(app.screen, ExportScreen) and box.value == "afile/notes.md"
            assert (
                error == f"Not exported: {tmp_path / 'afile'} is a file, not a folder; export somewhere else."
            )
            box.value = "new/"  # a folder that does not exist: asked about by its name
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen) and app.screen.question == (
                f"The folder {tmp_path / 'new'} does not exist. Create it and export there?"
            )
            await pilot.press("n")
            await pilot.pause()
            assert isinstance(app.screen, ExportScreen) and box.value == "new/"
            assert (
                "the folder" in str(app.screen.query_one("#error").render())
                and not (tmp_path / "new").exists()
            )
            await pilot.press("enter")
            await pilot.pause()
            await pilot.press("y")
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            assert (tmp_path / "new" / "three-turns-1.md").read_text().startswith("# Three turns")

    run(body())


def test_json_of_one_conversation_from_the_dialog(make_app, tmp_path, monkeypatch):
    cid = three_turns()
    monkeypatch.chdir(tmp_path)
    app = make_app()

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+o")
            await pilot.click(app.screen.query(RadioButton)[1])
            assert app.screen.query_one(Input).value == "three-turns-1.json"
            app.screen.query_one(Input).focus()
            await pilot.press("enter")
            await pilot.pause()
        with ChatStore() as store:
            export = json.loads((tmp_path / "three-turns-1.json").read_text())
            assert export["conversations"] == [json.loads(json.dumps(conversation_record(store.get(cid))))]
            assert export_file(store, tmp_path, "json").name == "chats.json"

    run(body())
