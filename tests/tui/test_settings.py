"""The settings dialog: every field bounded and named by its label, the values checked as they are when saved, and
the preferences it writes to config.toml (theme, conversation list, default model, new conversations' settings)."""

from textual.widgets import Checkbox, Input, Select

from gpt2tui.prefs import Prefs, config_path, load_prefs, save_prefs
from gpt2tui.store import ChatStore
from gpt2tui.tui.screens import ChatScreen, SettingsScreen
from gpt2tui.tui.widgets import Sidebar
from gpt2tui_testkit.tui import loaded, run


def error_line(app) -> str:
    return str(app.screen.query_one("#error").render())


async def open_settings(pilot) -> None:
    await loaded(pilot)
    await pilot.press("ctrl+s")
    await pilot.pause()
    assert isinstance(pilot.app.screen, SettingsScreen)


async def retype(pilot, box: str, text: str) -> None:
    """Clear a box and type into it, key by key, as a person does."""
    pilot.app.screen.query_one(f"#{box}", Input).focus()
    await pilot.press("ctrl+a", "ctrl+k", *text)


def test_an_out_of_range_value_is_refused_by_its_label_with_the_range(make_app):
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 40)) as pilot:
            await open_settings(pilot)
            for box, text, words in [
                ("temperature", "100000", "Temperature must be 0 to 2; got 100,000"),
                ("temperature", "hot", "Temperature: 'hot' is not a number; use 0 to 2"),
                ("top_p", "1.5", "Top-p must be above 0, up to 1, or empty for off; got 1.5"),
                ("max_new_tokens", "2.5", "Max new tokens: '2.5' is not a whole number; use 1 to 65,536"),
                ("repetition_penalty", "0", "Repetition penalty must be above 0, up to 10"),
            ]:
                await retype(pilot, box, text)
                await pilot.press("ctrl+s")
                await pilot.pause()
                assert isinstance(app.screen, SettingsScreen) and words in error_line(app), error_line(app)
                assert "_" not in error_line(app)  # no internal field names
                await retype(pilot, box, "1")

    run(body())


def test_the_value_checked_is_the_one_in_the_box_when_saving(make_app):
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 40)) as pilot:
            await open_settings(pilot)
            await retype(pilot, "temperature", "9")
            await pilot.press("enter")  # Enter in a box saves too
            await pilot.pause()
            assert "Temperature must be 0 to 2; got 9" in error_line(app)
            await pilot.press("backspace")
            await pilot.pause()
            assert error_line(app) == ""  # the error described the old value: it goes as the box changes
            await pilot.press("0", ".", "2", "enter")
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            assert app.chat.settings["temperature"] == 0.2 and app.session.settings.temperature == 0.2
            assert not config_path().exists()  # no preference changed: config.toml is left alone

    run(body())


def test_preferences_are_written_to_config_toml_and_apply_at_once(make_app):
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 40)) as pilot:
            await open_settings(pilot)
            await retype(pilot, "temperature", "0.3")
            await retype(pilot, "max_new_tokens", "")
            app.screen.query_one("#as_default", Checkbox).value = True
            app.screen.query_one("#sidebar", Checkbox).value = False
            app.screen.query_one("#theme", Select).value = "nord"
            await retype(pilot, "default_model", "my-bot")
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            prefs, problems = load_prefs()
            assert problems == [] and (prefs.theme, prefs.sidebar, prefs.model) == ("nord", False, "my-bot")
            assert prefs.chat["temperature"] == 0.3 and "max_new_tokens" not in prefs.chat
            assert app.theme == "nord" and not app.chat.query_one(Sidebar).display
            await pilot.press("ctrl+n")
            await pilot.pause()
            assert app.chat.settings["temperature"] == 0.3  # new conversations start with them

    run(body())


def test_a_config_file_that_cannot_be_written_keeps_the_dialog_and_what_was_typed(make_app, isolated_home):
    (isolated_home / "config").mkdir()
    (isolated_home / "config" / "gpt2tui").write_text("a file where the folder belongs")
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 40)) as pilot:
            await open_settings(pilot)
            await retype(pilot, "default_model", "my-bot")
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen) and "Preferences not saved" in error_line(app)
            assert app.screen.query_one("#default_model", Input).value == "my-bot"

    run(body())


def test_precedence_flags_then_the_conversation_then_config_toml_then_defaults(make_app):
    save_prefs(Prefs(theme="gruvbox", sidebar=False, chat={"temperature": 0.2, "top_k": 7}))
    with ChatStore() as store:
        saved = store.create("Saved", "tiny", {"temperature": 0.9, "top_k": 3, "top_p": 0.5})
    app = make_app(top_k=11)  # the flag --top-k 11

    async def body():
        async with app.run_test(size=(100, 40)) as pilot:
            await loaded(pilot)
            assert app.theme == "gruvbox" and not app.chat.query_one(Sidebar).display
            await app.chat.open_conversation(saved.id)
            assert (app.chat.settings["temperature"], app.chat.settings["top_k"]) == (0.9, 11)
            assert app.session.settings.top_p == 0.5
            await app.chat.new_chat()
            assert (app.chat.settings["temperature"], app.chat.settings["top_k"]) == (0.2, 11)
            assert app.session.settings.repetition_penalty == 1.1  # built-in default

    run(body())


def test_a_bad_config_file_is_a_warning_in_the_app_not_a_crash(make_app, isolated_home):
    from textual.notifications import Notify

    config_path().parent.mkdir(parents=True)
    config_path().write_text('theme = "no-such-theme"\nsidebar = false\n[chat]\ntemperature = 100000\n')
    notes = []
    app = make_app()

    def hook(message):
        if isinstance(message, Notify):
            notes.append(message.notification.message)

    async def body():
        async with app.run_test(size=(100, 40), message_hook=hook) as pilot:
            await loaded(pilot)
            assert not app.chat.query_one(Sidebar).display  # the rest of the file applies
            assert app.chat.settings.get("temperature") is None  # the bad value is not used

    run(body())
    joined = " | ".join(notes)
    assert "config.toml: theme 'no-such-theme' is not one of Textual's themes" in joined
    assert "config.toml: chat.temperature is not usable (Temperature must be 0 to 2; got 100,000)" in joined


def test_a_theme_from_the_command_palette_and_ctrl_g_are_remembered(make_app):
    """Outside the settings dialog too: the next start has them."""
    app = make_app()

    async def body():
        async with app.run_test(size=(100, 40)) as pilot:
            await loaded(pilot)
            app.theme = "nord"  # what the command palette's "Change theme" does
            await pilot.pause()
            await pilot.press("ctrl+g")
            await pilot.pause()
            assert not app.chat.query_one(Sidebar).display

    run(body())
    prefs, problems = load_prefs()
    assert problems == [] and prefs.theme == "nord" and prefs.sidebar is False
    again = make_app()

    async def restart():
        async with again.run_test(size=(100, 40)) as pilot:
            await loaded(pilot)
            assert again.theme == "nord" and not again.chat.query_one(Sidebar).display

    run(restart())


def test_a_hand_edited_config_file_is_left_as_it_is_and_the_app_says_so(make_app):
    from textual.notifications import Notify

    config_path().parent.mkdir(parents=True)
    mine = '# my own notes\ntheme = "gruvbox"\n\n[chat]\ntemperature = 0.5  # warm\n'
    config_path().write_text(mine)
    notes = []
    app = make_app()

    def hook(message):
        if isinstance(message, Notify):
            notes.append(message.notification.message)

    async def body():
        async with app.run_test(size=(100, 40), message_hook=hook) as pilot:
            await loaded(pilot)
            await pilot.press("ctrl+g")
            await pilot.pause()
            await pilot.press("ctrl+g")
            await pilot.pause()

    run(body())
    assert config_path().read_text() == mine  # comments and all
    said = [n for n in notes if "edited by hand" in n]
    assert len(said) == 1 and "settings dialog (Ctrl+S)" in said[0]
