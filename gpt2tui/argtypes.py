"""argparse value types shared by every `gpt2tui` command (a bad flag gets argparse's own one-line message), and what
the chat flags mean, shared by the full-screen app and the plain chat."""

from __future__ import annotations

import argparse
import math
import re

from .chat import ChatError
from .setting_fields import FIELDS, MAX_SEED


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def int_at_least(low: int):
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    return parse


def non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


DEVICE_HELP = "cpu, cuda, cuda:N or mps"


def device(text: str) -> str:
    """A device name gpt2tui can run on. Whether a GPU is there is checked when the model loads (`weights.pick_device`,
    which needs torch); a name no machine has (cpu:1, gpu, cuda:x) is refused here, before anything loads."""
    name = text.strip().lower()
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", name)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use {DEVICE_HELP}")
    kind, index = m.groups()
    if kind == "cpu" and index not in (None, "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: the CPU is one device, cpu (torch spreads work over its cores "
                                         "itself)")
    if kind == "mps" and index not in (None, "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: a Mac has one Apple GPU, mps")
    return name


def seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 2**63 - 1]")
    return value


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """A float in [low, high], with either end open on request."""

    def parse(text: str) -> float:
        value = _number(text, float)
        above = low < value if low_open else low <= value
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError(
                f"{value} is outside {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            )
        return value

    return parse


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number above 0")
    return value


def port(text: str) -> int:
    """A TCP port to listen on; 0 lets the system pick a free one."""
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


def setting(name: str):
    """A chat setting's flag value, with the bounds and words of `setting_fields` (the dialog's and /set's)."""
    field = FIELDS[name]

    def parse(text: str):
        try:
            return field.parse(text)
        except ChatError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


# Chat flags win over everything else: a new conversation starts with them, and a saved one is continued with them
# (precedence: flags, the conversation's own settings, config.toml, built-in defaults).
CHAT_SETTINGS = ("system_prompt", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed")


def chat_defaults(args: argparse.Namespace) -> dict:
    """The chat flags that were given, as `ChatSettings` fields."""
    return {name: getattr(args, name) for name in CHAT_SETTINGS if getattr(args, name, None) is not None}
