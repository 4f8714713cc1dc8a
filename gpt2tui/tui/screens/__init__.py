"""The chat app's screens, one per module."""

from .chat import ChatScreen
from .confirm import ConfirmScreen
from .export import ExportScreen
from .help import HelpScreen
from .no_model import NoModelScreen
from .rename import RenameScreen
from .settings import SettingsScreen

__all__ = [
    "ChatScreen", "ConfirmScreen", "ExportScreen", "HelpScreen", "NoModelScreen", "RenameScreen", "SettingsScreen",
]
