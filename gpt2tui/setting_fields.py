"""The chat settings' names, labels and bounds, in one table: `ChatSettings` checks values against it, and the settings
dialog, the plain chat's `/set`, the chat flags and the preferences file all parse and word their errors from it, so
no two of them can disagree on what a setting accepts or call it by different names.

Torch-free: the app's dialog and `gpt2tui --help` use it before (or without) loading a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .chat import AUTO_REPLY_CAP, ChatError

MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


@dataclass(frozen=True)
class SettingField:
    name: str  # the `ChatSettings` field
    label: str  # what people read: the dialog's label, and the start of every error about it
    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False  # the range excludes `low`
    optional: bool = False  # empty (None) is allowed, and means `empty`
    empty: str = ""  # what an empty value means, for the hint
    hint: str = ""  # what special values mean

    def range_text(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        return f"above {low}, up to {high}" if self.low_open else f"{low} to {high}"

    def describe(self) -> str:
        """The range and what special values mean, as the dialog's hint: "0 to 2; 0 is greedy"."""
        # A seed's range is a 19-digit number: "a whole number from 0" says it better in a hint; errors give it all.
        shown = f"a whole number from {_number_text(self.low)}" if self.high >= 2**32 else self.range_text()
        return "; ".join(p for p in (shown, self.hint) if p)

    def check(self, value: Any) -> Any:
        """`value` if it is a valid value of this setting, else `ChatError` naming the setting by its label and
        saying the range."""
        if value is None and self.optional:
            return None
        whole = isinstance(value, int) and not isinstance(value, bool)
        number = whole or isinstance(value, float) and math.isfinite(value)
        if self.kind is int and not whole or not number:
            what = "a whole number" if self.kind is int else "a number"
            raise ChatError(
                f"{self.label} must be {what} from {self.range_text()}{self._empty_note()}; got "
                f"{_shown(value)}"
            )
        above = value > self.low if self.low_open else value >= self.low
        if not (above and value <= self.high):
            raise ChatError(
                f"{self.label} must be {self.range_text()}{self._empty_note()}; got {_number_text(value)}"
            )
        return value

    def parse(self, text: str) -> Any:
        """The value typed as `text` (an empty box is None where that is allowed), checked."""
        text = text.strip()
        if not text and self.optional:
            return None
        if text.lower() in ("none", "off") and self.optional:
            return None
        try:
            value = self.kind(text)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            raise ChatError(
                f"{self.label}: {text[:40]!r} is not {what}; use {self.range_text()}{self._empty_note()}"
            ) from None
        return self.check(value)

    def _empty_note(self) -> str:
        return f", or empty for {self.empty}" if self.optional else ""


def _number_text(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


FIELDS: dict[str, SettingField] = {
    f.name: f
    for f in (
        # Above 2 a GPT-2's next-token distribution is close to uniform: the reply is noise (OpenAI's API stops at 2).
        SettingField("temperature", "Temperature", float, 0.0, 2.0, hint="0 is greedy"),
        SettingField("top_k", "Top-k", int, 0, 50257, optional=True, empty="off", hint="0 or empty: off"),
        SettingField(
            "top_p",
            "Top-p",
            float,
            0.0,
            1.0,
            low_open=True,
            optional=True,
            empty="off",
            hint="1 or empty: off",
        ),
        SettingField(
            "repetition_penalty", "Repetition penalty", float, 0.0, 10.0, low_open=True, hint="1 is off"
        ),
        SettingField(
            "max_new_tokens",
            "Max new tokens",
            int,
            1,
            65536,
            optional=True,
            empty=f"the room left in the window, at most {AUTO_REPLY_CAP}",
            hint=f"empty: the room left, at most {AUTO_REPLY_CAP}",
        ),
        SettingField(
            "seed",
            "Seed",
            int,
            0,
            MAX_SEED,
            optional=True,
            empty="a fresh draw each reply",
            hint="empty: a fresh draw each reply",
        ),
    )
}


def check_system_prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise ChatError(f"System prompt must be text; got {_shown(value)}")
    return value
