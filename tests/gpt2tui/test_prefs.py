"""Preferences in config.toml: read with tomllib, written whole with tomli-w, problems one line each, and the reply
length that follows the room left in the window."""

import pytest

from gpt2tui.chat import AUTO_REPLY_CAP, ChatError, prompt_budget, reply_length
from gpt2tui.model_files import QUANTIZATIONS
from gpt2tui.prefs import Prefs, config_path, load_prefs, remember, save_prefs
from gpt2tui.setting_fields import FIELDS


def test_the_file_lives_under_xdg_config_home(isolated_home):
    assert config_path() == isolated_home / "config" / "gpt2tui" / "config.toml"


def test_saved_prefs_read_back_and_off_values_survive_toml_having_no_null():
    prefs = Prefs(theme="nord", sidebar=False, model="my-bot",
                  chat={"temperature": 0.3, "top_k": None, "top_p": None, "seed": None, "max_new_tokens": None,
                        "system_prompt": "Be brief."})
    save_prefs(prefs)
    text = config_path().read_text()
    assert 'theme = "nord"' in text and "[chat]" in text and "seed" not in text
    got, problems = load_prefs()
    assert problems == []
    # Off is written as its number, empty is left out: both mean what None meant.
    assert got == Prefs(theme="nord", sidebar=False, model="my-bot",
                        chat={"temperature": 0.3, "top_k": 0, "top_p": 1.0, "system_prompt": "Be brief."})


def test_no_file_is_no_prefs_and_no_warning():
    assert load_prefs() == (Prefs(), [])


def test_a_file_that_is_not_toml_is_one_warning_naming_it(isolated_home):
    config_path().parent.mkdir(parents=True)
    config_path().write_text("theme = \n")
    prefs, (problem,) = load_prefs()
    assert prefs == Prefs() and "config.toml is not valid TOML" in problem and "\n" not in problem


def test_each_bad_key_is_one_warning_naming_the_file_and_the_key_and_the_rest_applies():
    config_path().parent.mkdir(parents=True)
    config_path().write_text('theme = 3\nsidebar = "yes"\ncolour = "red"\nmodel = "m"\n'
                             '[chat]\ntemperature = 100000\ntop_p = 0.5\nbogus = 1\nseed = 1.5\n')
    prefs, problems = load_prefs()
    assert prefs == Prefs(model="m", chat={"top_p": 0.5})
    assert len(problems) == 6 and all("config.toml: " in p and "\n" not in p for p in problems)
    joined = " | ".join(problems)
    for words in ("theme must be a non-empty string", "sidebar must be true or false", "'colour' is not a preference",
                  "chat.temperature is not usable (Temperature must be 0 to 2; got 100,000)",
                  "chat.bogus is not a chat setting", "chat.seed is not usable (Seed must be a whole number"):
        assert words in joined


def test_a_write_is_whole_or_nothing(monkeypatch):
    save_prefs(Prefs(theme="nord"))
    import gpt2tui.atomic as atomic

    def broken(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "_write_new_file", broken)
    with pytest.raises(OSError):
        save_prefs(Prefs(theme="gruvbox"))
    assert load_prefs()[0].theme == "nord"
    assert [p.name for p in config_path().parent.iterdir()] == ["config.toml"]


@pytest.mark.parametrize("name, value, words", [
    ("temperature", 100000, "Temperature must be 0 to 2; got 100,000"),
    ("temperature", float("nan"), "Temperature must be a number from 0 to 2"),
    ("top_k", -1, "Top-k must be 0 to 50,257, or empty for off"),
    ("top_p", 0, "Top-p must be above 0, up to 1"),
    ("repetition_penalty", 11, "Repetition penalty must be above 0, up to 10"),
    ("max_new_tokens", 0, "Max new tokens must be 1 to 65,536"),
    ("seed", -1, "Seed must be 0 to 9,223,372,036,854,775,807"),
    ("max_new_tokens", True, "Max new tokens must be a whole number"),
])
def test_every_setting_is_bounded_and_its_error_says_the_range_by_its_label(name, value, words):
    with pytest.raises(ChatError) as e:
        FIELDS[name].check(value)
    assert words in str(e.value) and name not in str(e.value)


def test_typed_values_are_parsed_with_the_same_words():
    assert FIELDS["top_k"].parse(" ") is None and FIELDS["seed"].parse("off") is None
    assert FIELDS["temperature"].parse("0.5") == 0.5
    with pytest.raises(ChatError, match="Top-k: 'ten' is not a whole number; use 0 to 50,257"):
        FIELDS["top_k"].parse("ten")


def test_the_reply_takes_the_room_left_capped_unless_a_setting_says():
    # A 256-token window: the old fixed 256 left the prompt half the window and every reply cut off.
    assert prompt_budget(256, None) == 192 and reply_length(256, 100, None) == 156
    assert prompt_budget(1024, None) == 768 and reply_length(1024, 100, None) == AUTO_REPLY_CAP == 512
    assert prompt_budget(4096, None) == 4096 - 512
    assert reply_length(1024, 1000, 30) == 30 and prompt_budget(1024, 30) == 994


def test_the_quantizations_config_files_accept_are_the_ones_quant_packs():
    from gpt2tui import quant

    assert QUANTIZATIONS == quant.KINDS


def test_a_chat_reply_without_max_new_tokens_gets_the_room_left():
    from gpt2tui.session import ChatSettings

    assert ChatSettings().max_new_tokens is None
    assert ChatSettings().sampling((), context_length=64, prompt_tokens=20).max_new_tokens == 44
    assert ChatSettings().sampling((), context_length=2048, prompt_tokens=20).max_new_tokens == AUTO_REPLY_CAP
    assert ChatSettings(max_new_tokens=7).sampling((), context_length=64, prompt_tokens=20).max_new_tokens == 7


def test_remember_writes_what_the_app_wrote_and_leaves_other_files_alone(tmp_path):
    path = tmp_path / "cfg" / "config.toml"
    assert remember(path, theme="nord") is None  # no file yet: written
    assert load_prefs(path)[0].theme == "nord"
    assert remember(path, sidebar=False) is None  # the app's own file: rewritten with the rest kept
    assert load_prefs(path)[0] == Prefs(theme="nord", sidebar=False)
    written = path.read_text()
    assert remember(path, sidebar=False) is None and path.read_text() == written  # nothing to change
    path.write_text(written + "# mine\n")
    assert "edited by hand" in remember(path, theme="gruvbox")
    path.write_text("sidebar = 3\n")
    said = remember(path, theme="gruvbox")
    assert "sidebar must be true or false" in said and "not rewritten" in said
    assert path.read_text() == "sidebar = 3\n"
