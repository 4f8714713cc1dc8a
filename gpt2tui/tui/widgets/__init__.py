"""The chat app's widgets, one per module."""

from .message import MessageView
from .message_list import MessageList
from .prompt_input import PromptInput
from .sidebar import Sidebar
from .status_bar import StatusBar

__all__ = ["MessageList", "MessageView", "PromptInput", "Sidebar", "StatusBar"]
