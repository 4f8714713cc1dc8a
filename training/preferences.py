"""Preference data for `gpt2tui dpo`: pairs of a better and a worse reply to one prompt, checked, rendered and batched.

Records are a JSON list or JSON lines, in the book's form `{"instruction", "input", "output", "chosen", "rejected"}`
(`input` optional, `output` ignored: it is the fine-tuning answer) or in chat form `{"messages": [...], "chosen": ...,
"rejected": ...}`, whose messages end with the user's turn and whose replies are strings or assistant messages. Each
side renders with the model's own chat template through `gpt2tui.chat.encode_conversation` (the chat app's code), so
the prompt ids are those the chat would give the model, and only the reply and its end token are scored.

A bad record (a missing or `null` field, identical replies, a pair longer than `--max-length`) is named with its file
and line and skipped, or refused with `strict`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2tui.chat import ChatError, ChatTemplate, encode_conversation
from gpt2tui.errors import DataError
from gpt2tui.tokenizer import Tokenizer

from .data import Example, InstructionData, _json_records, collate


@dataclass
class Pair:
    chosen: Example  # prompt + chosen reply + <|endoftext|>; `learn` marks the reply
    rejected: Example
    prompt: list[dict]  # the conversation up to the reply
    where: str  # "file:line"
    record: dict = field(repr=False, default_factory=dict)
    ref: tuple[float, float] | None = (
        None  # the reference model's log-probabilities of the two replies, cached
    )

    @property
    def ids(self) -> list[int]:
        """The longer side: what length bucketing sorts by and what must fit the window."""
        return max(self.chosen.ids, self.rejected.ids, key=len)


@dataclass
class PairBatch:
    """B pairs as 2B rows, the chosen replies first: inputs and targets `(2B, T)` (-100 off the replies) and the
    cached reference log-probabilities `(2B,)` in the same order."""

    x: torch.Tensor
    y: torch.Tensor
    ref: torch.Tensor


class BadRecord(ValueError):
    """One record that cannot be a preference pair; the message says why."""


def _text(record: dict, name: str, required: bool = True) -> str:
    if name not in record:
        if required:
            raise BadRecord(
                f"record has no {name!r} field (preference records need 'instruction', 'chosen' and "
                "'rejected', with an optional 'input'; chat records need 'messages', 'chosen' and "
                "'rejected')"
            )
        return ""
    value = record[name]
    if value is None:
        if required:
            raise BadRecord(f"field {name!r} is null; give it as a string")
        return ""
    if not isinstance(value, str):
        raise BadRecord(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _reply(record: dict, name: str) -> str:
    """A reply: a string, an assistant message, or a list holding one (the conversational form trl reads)."""
    value = record.get(name)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant" or not isinstance(value.get("content"), str):
            raise BadRecord(f"field {name!r} must be a string or an assistant message with string content")
        return value["content"]
    if isinstance(value, list):
        raise BadRecord(f"field {name!r} must be one reply, got a list of {len(value)}")
    return _text(record, name)


def record_prompt(record: object, template: ChatTemplate) -> tuple[list[dict], str, str]:
    """The prompt conversation and the chosen and rejected replies of a record, or `BadRecord` saying what is wrong."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise BadRecord("field 'messages' must be a non-empty list of {role, content} objects")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or not all(isinstance(m.get(k), str) for k in ("role", "content")):
                raise BadRecord(f"field 'messages[{j}]' must be an object with string 'role' and 'content'")
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            template.layout(prompt)
        except ChatError as e:
            raise BadRecord(f"field 'messages': {e}") from None
        if prompt[-1]["role"] != "user":
            raise BadRecord("field 'messages' must end with a user message (the prompt both replies answer)")
    else:
        instruction = _text(record, "instruction")
        if not instruction.strip():
            raise BadRecord("field 'instruction' is empty")
        prompt = template.instruction_messages(instruction, _text(record, "input", required=False))
    chosen, rejected = _reply(record, "chosen"), _reply(record, "rejected")
    if chosen.strip() == rejected.strip():
        raise BadRecord(
            "'chosen' and 'rejected' are the same reply; a preference pair needs two different replies"
        )
    return prompt, chosen, rejected


def load_pairs(
    path: str | os.PathLike,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    max_length: int,
    strict: bool = False,
) -> tuple[list[Pair], list[str]]:
    """The usable pairs of a preference file, and a line per skipped record (`file:line: why`). With `strict` the
    first bad record raises a `DataError` instead."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass one preference file (.json or .jsonl)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    pairs, skipped = [], []
    for line, record in _json_records(path):
        where = f"{path}:{line}"
        try:
            prompt, chosen, rejected = record_prompt(record, template)
            sides = []
            for reply in (chosen, rejected):
                messages = [*prompt, {"role": "assistant", "content": reply}]
                ids, learn = encode_conversation(tokenizer, messages, template)
                sides.append(Example(ids, learn, messages, where, record))
            longest = max(len(s.ids) for s in sides)
            if longest > max_length:
                raise BadRecord(
                    f"the pair is {longest} tokens long (prompt and longer reply, with the end token), "
                    f"over --max-length {max_length}; shorten it or raise --max-length"
                )
        except BadRecord as e:
            if strict:
                raise DataError(
                    f"{where}: {e} (--strict refuses the file; without it such records are skipped)"
                ) from None
            skipped.append(f"{where}: {e}")
            continue
        pairs.append(Pair(sides[0], sides[1], prompt, where, record))
    if not pairs:
        raise DataError(f"{path}: holds no usable preference pair" + (f" ({skipped[0]})" if skipped else ""))
    return pairs, skipped


def is_preference_file(path: str | os.PathLike) -> bool:
    """Whether a JSON/JSONL file holds preference records (its first record has 'chosen' and 'rejected')."""
    try:
        records = _json_records(Path(path).expanduser())
    except DataError:
        return False
    return bool(records) and isinstance(records[0][1], dict) and {"chosen", "rejected"} <= set(records[0][1])


def collate_pairs(pairs: Sequence[Pair], pad_id: int) -> PairBatch:
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    x, y = collate(
        rows, pad_id, mask_prompt=True
    )  # (2B, T): only the replies and their end tokens are scored
    ref = [p.ref[0] if p.ref else float("nan") for p in pairs] + [
        p.ref[1] if p.ref else float("nan") for p in pairs
    ]
    return PairBatch(x, y, torch.tensor(ref, dtype=torch.float32))  # (2B,)


class PreferenceData(InstructionData):
    """Fine-tuning's length-bucketed, seeded batching (`InstructionData`), of pairs: batch `k` is a pure function of
    `k`, so a resumed run reads the batches the uninterrupted one would have."""

    def train_batch(self, k: int, rank: int = 0, world: int = 1) -> PairBatch:
        g = k * world + rank
        n = self.batches_per_epoch()
        idx = self.epoch_batches(g // n)[g % n]
        return collate_pairs([self.data["train"][i] for i in idx], self.pad_id)

    def eval_batches(self, split: str, max_batches: int, rank: int = 0, world: int = 1, response_only=None):
        pairs = sorted(self.data.get(split, []), key=lambda p: len(p.ids))
        batches = [pairs[i : i + self.B] for i in range(0, len(pairs), self.B)][:max_batches]
        for b in batches[rank::world]:
            yield collate_pairs(b, self.pad_id)
