"""The chat app's screens, one per module."""

from .chat import ChatScreen
from .confirm import ConfirmScreen
from .copy import Copied, CopyScreen
from .export import ExportScreen
from .help import HelpScreen
from .import_chats import ImportScreen
from .model_picker import ModelChoice, ModelPickerScreen
from .no_model import NoModelScreen
from .rename import RenameScreen
from .settings import SettingsScreen

__all__ = [
    "ChatScreen", "ConfirmScreen", "Copied", "CopyScreen", "ExportScreen", "HelpScreen", "ImportScreen", "ModelChoice",
    "ModelPickerScreen", "NoModelScreen", "RenameScreen", "SettingsScreen",
]
