"""Every key of the chat app, in one table: the chat screen's bindings, the help screen and the command palette are
all built from it, so a key cannot exist in one place and be missing from another."""

from __future__ import annotations

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


# In the message box. Shift+Enter arrives only where the terminal reports modifiers on Enter (kitty, WezTerm, foot,
# recent iTerm2...); Ctrl+J is a plain line feed, which every terminal sends, so it is the newline that always works.
INPUT_KEYS = [
    Key("enter", "Enter", "Send the message"),
    Key("shift+enter", "Shift+Enter", "New line (where the terminal reports it)"),
    Key("ctrl+j", "Ctrl+J", "New line (works in every terminal)"),
    Key("alt+enter", "Alt+Enter", "New line (where the terminal reports it)"),
]

CHAT_KEYS = [
    Key("escape", "Esc", "Stop the reply (it is kept, marked stopped)", "stop", footer="Stop"),
    Key("ctrl+r", "Ctrl+R", "Regenerate the last reply", "regenerate", footer="Regenerate"),
    Key("ctrl+n", "Ctrl+N", "New conversation", "new_chat", footer="New"),
    Key("ctrl+f", "Ctrl+F", "Search conversations", "search"),
    Key("f2", "F2", "Rename the conversation", "rename"),
    Key("f8", "F8", "Delete the conversation (asks first)", "delete"),
    Key("ctrl+s", "Ctrl+S", "Settings of this conversation", "settings", footer="Settings"),
    Key("ctrl+o", "Ctrl+O", "Export the conversation to Markdown", "export"),
    Key("ctrl+l", "Ctrl+L", "Copy the last reply to the clipboard", "copy_reply"),
    Key("ctrl+g", "Ctrl+G", "Show or hide the conversation list", "toggle_sidebar"),
    Key("tab", "Tab / Shift+Tab", "Move between the list, the search box and the message box", palette=False),
]

APP_KEYS = [
    Key("f1", "F1", "This help", "app.help", footer="Help"),
    Key("ctrl+p", "Ctrl+P", "Command palette: every action by name", palette=False),
    Key("ctrl+q", "Ctrl+Q", "Quit (a reply in flight is stopped and saved)", palette=False),
]

ALL_KEYS = INPUT_KEYS + CHAT_KEYS + APP_KEYS


def bindings(keys: list[Key]) -> list[Binding]:
    return [
        Binding(k.keys, k.action, k.footer or k.description, show=bool(k.footer), key_display=k.label)
        for k in keys
        if k.action
    ]
