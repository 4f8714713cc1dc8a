"""Switching the model inside the app (F4 or the command palette): the models `gpt2tui models` lists plus a typed
folder, dtype/quantize choices, loading in the background, and the conversation remembering its model."""

import threading

from textual.widgets import Input, OptionList, Select

from gpt2tui import save_checkpoint
from gpt2tui.errors import ModelNotFoundError
from gpt2tui.session import ChatSession
from gpt2tui.store import ChatStore
from gpt2tui.tui import ChatApp
from gpt2tui.tui.screens import ChatScreen, ModelChoice, ModelPickerScreen
from gpt2tui.tui.widgets import StatusBar
from gpt2tui.weights import models_dir
from gpt2tui_testkit.tui import MODEL_NAME, loaded, reply_done, run, send, wait_until


def saved_model(tiny_model, name: str = "small-bot"):
    return save_checkpoint(tiny_model, models_dir() / name, chat_template="alpaca")


async def picker_listed(pilot) -> OptionList:
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ModelPickerScreen), what="the model picker")
    options = pilot.app.screen.query_one("#models", OptionList)
    await wait_until(pilot, lambda: pilot.app.screen.listed, what="the models listed")
    return options


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


def test_switch_to_a_saved_model_quantised_and_the_conversation_remembers_it(tiny_model, tokenizer):
    path = saved_model(tiny_model)
    with ChatStore() as store:
        c = store.create("Hello", model=MODEL_NAME)
        store.append_message(c.id, "user", "Hi")
        store.append_message(c.id, "assistant", "Hello.", "eos")
    # The real loading path (`ChatSession.load` from the models folder), behind the app's default loader.
    app = ChatApp(
        MODEL_NAME,
        loader=lambda: ChatSession(tiny_model, tokenizer, model_name=MODEL_NAME),
        settings={"max_new_tokens": 3},
    )

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("f4")
            options = await picker_listed(pilot)
            lines = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            assert any("small-bot" in line and "window 512" in line and "saved" in line for line in lines)
            assert str(app.screen.query_one("#where").render()) == str(path)  # the whole path, never cut
            app.screen.query_one("#quantize", Select).value = "int8"
            options.focus()
            await pilot.press("enter")
            await wait_until(
                pilot,
                lambda: app.session is not None and app.session.model_name == "small-bot",
                what="the new model",
            )
            await pilot.pause()
            assert app.session.info()["dtype"] == "int8"
            status = app.chat.query_one(StatusBar)
            assert status.model == "small-bot" and status.model_path == str(path) and status.state == "Ready"
            assert ChatStore().get(c.id).model == "small-bot"
            await send(pilot, "And now?")
            await reply_done(pilot)
            assert app.session.last_stats.new_tokens == 3  # the conversation goes on with the new model
            assert any("Now chatting with small-bot" in m for m in notes(app))

    run(body())


def test_loading_shows_progress_refuses_messages_and_a_failure_keeps_the_model(
    make_app, tiny_model, tokenizer
):
    release = threading.Event()
    asked: list[ModelChoice] = []

    def load_named(choice: ModelChoice) -> ChatSession:
        asked.append(choice)
        release.wait(20)
        if choice.name == "nowhere":
            raise ModelNotFoundError("'nowhere' is not a model directory, a saved model or an official name")
        return ChatSession(tiny_model, tokenizer, model_name=choice.name)

    app = make_app()
    app.load_named = load_named

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await pilot.press("f4")
            await picker_listed(pilot)
            box = app.screen.query_one("#path", Input)
            box.value = "~/definitely/not/here"
            box.focus()
            await pilot.press("enter")  # a folder that is not there is refused in the dialog
            assert isinstance(app.screen, ModelPickerScreen)
            assert any("There is no folder ~/definitely/not/here" in m for m in notes(app))
            box.value = "nowhere"
            app.screen.query_one("#dtype", Select).value = "bfloat16"
            await pilot.press("enter")
            await wait_until(pilot, lambda: asked, what="the load to start")
            assert asked == [ModelChoice("nowhere", "bfloat16", None)]
            assert isinstance(app.screen, ChatScreen)
            status = app.chat.query_one(StatusBar)
            assert status.loading and status.state.startswith("Loading nowhere (bfloat16)…")
            await send(pilot, "Are you there?")
            await pilot.pause()
            assert (
                any("still loading: nothing was sent" in m for m in notes(app)) and app.session.messages == []
            )
            release.set()
            await wait_until(pilot, lambda: not status.loading, what="the failed load")
            await wait_until(
                pilot,
                lambda: any("nowhere could not be loaded" in m and "Still chatting with tiny" in m for m in notes(app)),
                what="the failure's notice",
            )
            assert app.chat.session is not None and app.chat.session.model_name == MODEL_NAME

    run(body())


def test_the_palette_opens_the_picker_and_a_conversation_says_when_its_model_is_gone(make_app):
    with ChatStore() as store:
        c = store.create("Old", model="/models/that/was/deleted")
        store.append_message(c.id, "user", "Hi")
        store.append_message(c.id, "assistant", "Hello.", "eos")
    app = make_app()

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            await wait_until(
                pilot, lambda: any("not here any more" in m for m in notes(app)), what="the notice"
            )
            note = next(m for m in notes(app) if "not here any more" in m)
            assert (
                note.startswith("This conversation was with /models/that/was/deleted") and "from tiny" in note
            )
            await pilot.press("ctrl+p")
            await pilot.press(*"switch the model")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await picker_listed(pilot)
            assert "now: tiny" in str(app.screen.query_one(".dialog-title").render())

    run(body())
