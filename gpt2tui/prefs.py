"""Remembered preferences: `$XDG_CONFIG_HOME/gpt2tui/config.toml` (`~/.config/gpt2tui/config.toml`).

    theme = "textual-dark"        # the app's colour theme (any of Textual's themes)
    sidebar = true                # the conversation list shown at start
    model = "my-bot"              # the model when no --model or $GPT2TUI_MODEL names one

    [chat]                        # what new conversations start with (ChatSettings fields)
    temperature = 0.7
    top_k = 50                    # 0: off
    top_p = 0.95                  # 1: off
    repetition_penalty = 1.1
    max_new_tokens = 300          # left out: the room left in the window, at most 512
    seed = 1                      # left out: a fresh draw each reply
    system_prompt = "You are terse."

The app's settings dialog writes it (atomically, with tomli-w); people may edit it too. A theme picked from the command
palette and the conversation list shown or hidden with Ctrl+G are remembered in it as well (`remember`), unless the
file was edited by hand: a rewrite would drop its comments and layout, so the app then says so and leaves it. Precedence, highest first:
command-line flags, a conversation's own settings, this file, the built-in defaults. A file that cannot be read, or a
key with a bad value, is one warning line naming the file and the key; the rest of the file still applies.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from .atomic import write_atomic
from .chat import ChatError
from .setting_fields import FIELDS, check_system_prompt

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; setup.py installs its original, tomli, there
    import tomli as tomllib

CHAT_TABLE = "chat"
KEYS = ("theme", "sidebar", "model", CHAT_TABLE)
CHAT_KEYS = ("system_prompt", *FIELDS)


def config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "gpt2tui"


def config_path() -> Path:
    return config_dir() / "config.toml"


def _home_relative(path: Path) -> str:
    """`~/.config/...` rather than `/home/someone/.config/...`: shorter on a status line or in a dialog."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Prefs:
    theme: str | None = None
    sidebar: bool | None = None
    model: str | None = None
    # New conversations' settings, as `ChatSettings` fields; a key left out keeps the built-in default.
    chat: dict[str, Any] = field(default_factory=dict)

    def to_toml(self) -> dict:
        """What the file holds. TOML has no null: an optional setting that is off (top_k, top_p) is written as its
        "off" number, and one that is empty (max_new_tokens, seed) is left out, which means the same."""
        data: dict[str, Any] = {}
        for key in ("theme", "sidebar", "model"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        off = {"top_k": 0, "top_p": 1.0}
        chat = {}
        for key in CHAT_KEYS:
            if key not in self.chat:
                continue
            value = self.chat[key]
            if value is None:
                value = off.get(key)
            if value is not None:
                chat[key] = value
        if chat:
            data[CHAT_TABLE] = chat
        return data


def _warning(path: Path, key: str, problem: str) -> str:
    return f"{_home_relative(path)}: {key} {problem}; that key is ignored"


def parse_prefs(data: Mapping[str, Any], path: Path) -> tuple[Prefs, list[str]]:
    """Preferences from a parsed file, and a warning line for each key that cannot be used (the others apply)."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            problems.append(_warning(path, repr(key), f"is not a preference (known: {', '.join(KEYS)})"))
        elif key == "sidebar" and not isinstance(value, bool):
            problems.append(_warning(path, key, "must be true or false"))
        elif key in ("theme", "model") and not (isinstance(value, str) and value.strip()):
            problems.append(_warning(path, key, "must be a non-empty string"))
        elif key != CHAT_TABLE:
            values[key] = value.strip() if isinstance(value, str) else value
    table = data.get(CHAT_TABLE, {})
    chat: dict[str, Any] = {}
    if not isinstance(table, Mapping):
        problems.append(_warning(path, CHAT_TABLE, "must be a table ([chat])"))
        table = {}
    for key, value in table.items():
        name = f"{CHAT_TABLE}.{key}"
        if key not in CHAT_KEYS:
            problems.append(_warning(path, name, f"is not a chat setting (known: {', '.join(CHAT_KEYS)})"))
            continue
        try:
            chat[key] = check_system_prompt(value) if key == "system_prompt" else FIELDS[key].check(value)
        except ChatError as e:
            problems.append(_warning(path, name, f"is not usable ({e})"))
    return Prefs(chat=chat, **values), problems


def load_prefs(path: str | os.PathLike | None = None) -> tuple[Prefs, list[str]]:
    """The preferences in `path` (default: `config_path()`) and one warning line per problem. No file: no
    preferences and no warning. A file that is not TOML, or cannot be read: no preferences, and the warning says why."""
    path = Path(path) if path is not None else config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return Prefs(), []
    except tomllib.TOMLDecodeError as e:
        return Prefs(), [
            f"{_home_relative(path)} is not valid TOML ({e}); its preferences are ignored until it is "
            "fixed or deleted"
        ]
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return Prefs(), [f"{_home_relative(path)} cannot be read ({reason}); its preferences are ignored"]
    return parse_prefs(data, path)


_HEADER = '# gpt2tui preferences, written by the app\'s settings dialog (Ctrl+S); see the README, "Preferences".\n'


def _written_by_the_app(prefs: Prefs) -> str:
    return _HEADER + tomli_w.dumps(prefs.to_toml())


def save_prefs(prefs: Prefs, path: str | os.PathLike | None = None) -> Path:
    """Write `prefs` to `path` (default: `config_path()`), whole or not at all: into a temporary file, then renamed.
    Raises `OSError` (naming the file) when it cannot be written."""
    path = Path(path) if path is not None else config_path()
    return write_atomic(path, _written_by_the_app(prefs))


def remember(path: str | os.PathLike | None = None, **changes: Any) -> str | None:
    """Set top-level preferences (`theme`, `sidebar`) in the file, keeping the rest. None when the file holds them
    now (written, or already so); else one line saying why the file was left as it is: it has problems a rewrite
    would drop, it was edited by hand (a rewrite would drop its comments), or it cannot be written."""
    path = Path(path) if path is not None else config_path()
    prefs, problems = load_prefs(path)
    if problems:
        return f"{problems[0]}; so it was not rewritten"
    new = replace(prefs, **changes)
    if new == prefs:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError):
        text = ""  # load_prefs read it a moment ago: treat a file that changed under us as someone else's
    if text is not None and text != _written_by_the_app(prefs):
        return (f"{_home_relative(path)} was edited by hand, so the app does not rewrite it on its own (its comments "
                "would go); set this in the settings dialog (Ctrl+S) or in the file")
    try:
        save_prefs(new, path)
    except OSError as e:
        return f"Preferences not saved: {e.filename or _home_relative(path)}: {e.strerror or e}"
    return None


def shown_path(path: str | os.PathLike | None = None) -> str:
    """The file's path as the app and the messages show it."""
    return _home_relative(Path(path) if path is not None else config_path())
