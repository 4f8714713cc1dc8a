"""Every key of the chat app, in one table: the chat screen's bindings, the help screen and the command palette are
all built from it, so a key cannot exist in one place and be missing from another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma-separated: the first is the one shown
    label: str  # as the help screen prints it
    description: str
    action: str = ""  # an action of the chat screen; "" for keys a widget handles itself
    footer: str = ""  # its short name in the footer; "" keeps it out of the footer
    palette: bool = True  # offered by the command palette (when it has an action)


# In the message box. Shift+Enter and Alt+Enter reach the app only from terminals that speak the kitty keyboard
# protocol (kitty, foot, Ghostty; WezTerm when configured to). Elsewhere Shift+Enter is a plain Enter, and Alt+Enter is ESC + Enter, which
# Textual reads as Enter (textual#6663): it sends. tmux never passes the protocol on, so inside tmux both send.
# Ctrl+J is a plain line feed, which every terminal sends, so it is the newline that always works.
INPUT_KEYS = [
    Key("enter", "Enter", "Send the message"),
    Key("shift+enter", "Shift+Enter", "New line where the terminal speaks the kitty keyboard protocol (kitty, foot, "
        "Ghostty); in tmux and elsewhere it sends"),
    Key("ctrl+j", "Ctrl+J", "New line (every terminal, tmux too)"),
    Key("alt+enter", "Alt+Enter", "New line where the terminal speaks the kitty keyboard protocol (kitty, foot, "
        "Ghostty); in tmux and elsewhere it sends"),
]

CHAT_KEYS = [
    Key("escape", "Esc", "Stop the reply (it is kept, marked stopped)", "stop", footer="Stop"),
    Key("ctrl+r", "Ctrl+R", "Regenerate the last (or selected) reply; earlier ones stay as alternatives", "regenerate",
        footer="Regenerate"),
    Key("ctrl+n", "Ctrl+N", "New conversation", "new_chat", footer="New"),
    Key("ctrl+f", "Ctrl+F", "Search conversations", "search"),
    Key("f2", "F2", "Rename the conversation", "rename"),
    Key("f8", "F8", "Delete the conversation (asks first)", "delete"),
    Key("ctrl+s", "Ctrl+S", "Settings of this conversation", "settings", footer="Settings"),
    Key("ctrl+o", "Ctrl+O", "Export this or every conversation (Markdown or JSON)", "export"),
    Key("f5", "F5", "Import conversations from JSON (an export, or fine-tuning records)", "import_chats"),
    Key("ctrl+l", "Ctrl+L", "Copy the last reply to the clipboard", "copy_reply"),
    Key("ctrl+t", "Ctrl+T", "Copy a message or one of a reply's numbered code blocks", "copy"),
    Key("f4", "F4", "Switch the model (this conversation remembers it)", "pick_model", footer="Model"),
    Key("ctrl+g", "Ctrl+G", "Show or hide the conversation list", "toggle_sidebar"),
    Key("tab", "Tab / Shift+Tab", "Move between the list, the search box, the conversation and the message box",
        palette=False),
]

# In the conversation (Shift+Tab from the message box, or a click on a message): a message is selected.
MESSAGE_KEYS = [
    Key("up", "↑", "Select the message above", "select_message(-1)", palette=False),
    Key("down", "↓", "Select the message below", "select_message(1)", palette=False),
    Key("left", "←", "Show the selected message's previous alternative (2/3 → 1/3)", "screen.branch(-1)",
        palette=False),
    Key("right", "→", "Show its next alternative; the conversation below follows", "screen.branch(1)",
        palette=False),
    Key("enter,e", "Enter / E", "Edit your selected message; sending starts a branch, the old one stays",
        "screen.edit_message", palette=False),
]

APP_KEYS = [
    Key("f1", "F1", "This help", "app.help", footer="Help"),
    Key("ctrl+p", "Ctrl+P", "Command palette: every action by name", palette=False),
    Key("ctrl+q", "Ctrl+Q", "Quit (a reply in flight is stopped and saved)", palette=False),
]

ALL_KEYS = INPUT_KEYS + CHAT_KEYS + MESSAGE_KEYS + APP_KEYS


# WezTerm speaks it only with `enable_kitty_keyboard = true`, which the environment does not tell.
KITTY_PROTOCOL_TERMINALS = {"kitty", "foot", "ghostty"}


def terminal_name(environ: Mapping[str, str]) -> str:
    """The terminal the app runs in, as far as the environment tells: "tmux" and "screen" first, as they stand
    between the app and the real terminal; "" when it cannot be told."""
    term = environ.get("TERM", "")
    if environ.get("TMUX") or term.startswith("tmux"):
        return "tmux"
    if environ.get("STY") or term.startswith("screen"):
        return "screen"
    if environ.get("KITTY_WINDOW_ID") or term == "xterm-kitty":
        return "kitty"
    if term.startswith("foot"):
        return "foot"
    program = environ.get("TERM_PROGRAM", "").lower()
    return program if program in KITTY_PROTOCOL_TERMINALS else program or term


def newline_keys(environ: Mapping[str, str]) -> list[str]:
    """The keys that break the line in the message box here (the rest of Shift+Enter / Alt+Enter send)."""
    if terminal_name(environ) in KITTY_PROTOCOL_TERMINALS:
        return ["Ctrl+J", "Shift+Enter", "Alt+Enter"]
    return ["Ctrl+J"]


def newline_note(environ: Mapping[str, str]) -> str:
    """One line for the help screen: which keys make a new line in this terminal."""
    name = terminal_name(environ) or "this terminal"
    keys = newline_keys(environ)
    if len(keys) > 1:
        return f"Here ({name}): Ctrl+J, Shift+Enter and Alt+Enter all make a new line."
    return f"Here ({name}): Ctrl+J makes a new line; Shift+Enter and Alt+Enter arrive as Enter and send."


def bindings(keys: list[Key]) -> list[Binding]:
    return [
        Binding(k.keys, k.action, k.footer or k.description, show=bool(k.footer), key_display=k.label)
        for k in keys
        if k.action
    ]
