"""argparse value types shared by every `gpt2tui` command (a bad flag gets argparse's own one-line message), and what
the chat flags mean, shared by the full-screen app and the plain chat."""

from __future__ import annotations

import argparse
import math


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


MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


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


# Chat flags set what a *new* conversation starts with; unset ones keep ChatSettings' defaults, and a saved
# conversation keeps its own settings.
CHAT_SETTINGS = ("system_prompt", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed")


def chat_defaults(args: argparse.Namespace) -> dict:
    """The chat flags that were given, as `ChatSettings` fields."""
    return {name: getattr(args, name) for name in CHAT_SETTINGS if getattr(args, name, None) is not None}
