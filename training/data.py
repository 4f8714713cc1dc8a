"""Training data: batches of pretraining token windows, and instruction sets as rendered conversations.

Text (pretraining). `--data` is read by `sources.py` (text, JSON lines, Parquet, compressed, Hugging Face datasets)
and written once as memory-mapped uint16 token shards by `corpus.py`; `PretrainData` cuts windows from them.

Instructions (fine-tuning). JSON (a list) or JSON lines of either the seed's `{"instruction", "input", "output"}` or
`{"messages": [{"role", "content"}, ...]}`, or the same records from a Hugging Face dataset (`hf:NAME`), rendered by
`gpt2tui.chat.encode_conversation` — the chat app's own code — so training and chatting agree token for token. A
seeded shuffle splits them 85/5/10 into train/val/test.

Batches are pure functions of a global micro-batch index `k` (plus rank and world size), so a run's data position is
just its step, and a resumed run reads exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt2tui.chat import TEMPLATES, ChatError, encode_conversation
from gpt2tui.errors import DataError
from gpt2tui.tokenizer import Tokenizer

# The corpus's and the sources' names that pretraining, evaluation and the tests have always imported from here.
from .corpus import (
    SHARD_TOKENS,
    Corpus,
    TokenStream,
    is_token_file,
    open_corpus,
    prepare_corpus,
    tokenize_in_memory,
)
from .sources import HF_PREFIX, TEXT_SUFFIXES, expand_paths, hf_records, split_exact

__all__ = ["SHARD_TOKENS", "TEXT_SUFFIXES", "Corpus", "TokenStream", "expand_paths", "is_token_file", "open_corpus",
           "prepare_corpus", "split_exact", "tokenize_in_memory"]

IGNORE_INDEX = -100


# -- text corpora --------------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


class PretrainData:
    """Windows of `T + 1` tokens cut from the train stream at stride T, visited in a seeded permutation per epoch."""

    def __init__(self, train, val, context_length: int, batch_size: int, seed: int):
        self.train = train if isinstance(train, TokenStream) else TokenStream([train], 0, len(train))
        self.val = val if isinstance(val, TokenStream) else TokenStream([val], 0, len(val))
        self.T, self.B, self.seed = context_length, batch_size, seed
        self.n_windows = (len(self.train) - 1) // self.T
        if self.n_windows < 1:
            raise DataError(
                f"the training split has {len(self.train)} tokens, fewer than --context-length {self.T} + 1; "
                f"add text or lower --context-length"
            )
        self._perms: dict[int, np.ndarray] = {}
        self.mask_prompt = False

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n_windows, generator=g).numpy()}
        return self._perms[epoch]

    def _rows(self, stream: TokenStream, starts, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(np.stack([stream.slice(s, s + T + 1) for s in starts]).astype(np.int64))  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]  # (B, T), (B, T)

    def train_batch(self, k: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `k` of the run: global samples `[(k·world + rank)·B, … + B)`."""
        first = (k * world + rank) * self.B
        starts = [int(self._perm(i // self.n_windows)[i % self.n_windows]) * self.T for i in range(first, first + self.B)]
        return self._rows(self.train, starts, self.T)

    def eval_batches(self, split: str, max_batches: int, rank: int = 0, world: int = 1, response_only=None):
        """Fixed windows of a split: the validation split in order, the train split evenly spread."""
        stream = self.val if split == "val" else self.train
        T = min(self.T, len(stream) - 1)
        if T < 1:
            return
        n = (len(stream) - 1) // T
        want = min(n, max_batches * self.B)
        idx = np.linspace(0, n - 1, want).round().astype(int) if split != "val" and want < n else np.arange(want)
        batches = [idx[i : i + self.B] for i in range(0, want, self.B)]
        for b in batches[rank::world]:
            yield self._rows(stream, [int(i) * T for i in b], T)

    def splits(self) -> tuple[str, ...]:
        return ("val",) if len(self.val) >= 2 else ()

    def batches_per_epoch(self) -> int:
        return max(1, self.n_windows // self.B)


# -- instruction data ----------------------------------------------------------------------------------------------


@dataclass
class Example:
    ids: list[int]  # the rendered conversation, ending with <|endoftext|>
    learn: list[bool]  # which ids are the model's to produce (the replies and the final end token)
    messages: list[dict]
    where: str  # "file:line", for messages about this record
    record: dict | None = None  # the record as read


def _json_records(path: Path) -> list[tuple[int, object]]:
    """`(line, value)` of each record of a JSON list or a JSON-lines file."""
    text = read_text(path)
    body = text.lstrip()
    if not body:
        raise DataError(f"{path}: the file is empty; expected a JSON list of records or JSON lines")
    if body[0] != "[":
        records = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit raw inside a JSON string
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
                except (RecursionError, ValueError):  # nested thousands deep; a number of thousands of digits
                    raise DataError(f"{path}:{n}: the record is nested too deeply or holds a number too long to "
                                    "be an instruction record") from None
        return records
    # A JSON list, decoded element by element so each record knows the line it starts on.
    dec, records = json.JSONDecoder(), []
    i, line, counted = len(text) - len(body) + 1, 1, 0

    def skip(i):
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    try:
        i = skip(i)
        if i < len(text) and text[i] == "]":
            i += 1
        else:
            while True:
                line += text.count("\n", counted, i)
                counted = i
                value, i = dec.raw_decode(text, i)
                records.append((line, value))
                i = skip(i)
                if i < len(text) and text[i] == ",":
                    i = skip(i + 1)
                    continue
                if i < len(text) and text[i] == "]":
                    i += 1
                    break
                raise json.JSONDecodeError("expected ',' or ']' after a record", text, i)
        if skip(i) != len(text):
            raise json.JSONDecodeError("extra data after the list", text, skip(i))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except (RecursionError, ValueError):  # nested thousands deep; a number of thousands of digits
        raise DataError(f"{path}:{line}: a record is nested too deeply or holds a number too long to be an "
                        "instruction record") from None
    return records


def _field(record: dict, name: str, where: str, required: bool = True) -> str:
    if name not in record or record[name] is None:
        if required:
            raise DataError(
                f"{where}: record has no {name!r} field (instruction records need 'instruction' and 'output', "
                f"with an optional 'input'; chat records need 'messages')"
            )
        return ""
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def record_messages(record: object, where: str) -> list[dict]:
    """A record as a conversation ending with the assistant's reply, or a `DataError` naming the field."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
        for j, m in enumerate(messages):
            if not isinstance(m, dict):
                raise DataError(f"{where}: field 'messages[{j}]' must be an object with 'role' and 'content'")
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    raise DataError(f"{where}: field 'messages[{j}].{key}' is missing or not a string")
        try:
            TEMPLATES["alpaca"].layout(messages)
        except ChatError as e:
            raise DataError(f"{where}: field 'messages': {e}") from None
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with an assistant message (the reply to learn)")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    instruction = _field(record, "instruction", where)
    if not instruction.strip():
        raise DataError(f"{where}: field 'instruction' is empty")
    output = _field(record, "output", where)
    return TEMPLATES["alpaca"].instruction_messages(instruction, _field(record, "input", where, required=False), output)


def load_examples(path: str | os.PathLike, tokenizer: Tokenizer, template: str = "alpaca",
                  config: str | None = None, split: str = "train") -> list[Example]:
    """Every record of an instruction file, or of a Hugging Face dataset named `hf:NAME` (its `config` and
    `split`), checked and rendered with the chat template."""
    if os.fspath(path).startswith(HF_PREFIX):
        name = os.fspath(path)[len(HF_PREFIX):].strip()
        if not name:
            raise DataError(f"{path}: name a dataset after hf:, e.g. hf:tatsu-lab/alpaca")
        records = hf_records(name, config, split)
    else:
        if config is not None:
            raise DataError("--data-config chooses a Hugging Face dataset's configuration; it needs an hf: name")
        path = Path(path).expanduser()
        if path.is_dir():
            raise DataError(f"{path} is a folder; pass one instruction file (.json or .jsonl)")
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        records = ((f"{path}:{line}", record) for line, record in _json_records(path))
    examples = []
    for where, record in records:
        messages = record_messages(record, where)
        ids, learn = encode_conversation(tokenizer, messages, template)
        examples.append(Example(ids, learn, messages, where, record))
    if not examples:
        raise DataError(f"{path}: holds no records")
    return examples


def split_examples(examples: list, seed: int, fractions=(0.85, 0.05, 0.10)) -> dict[str, list]:
    """A seeded shuffle cut into train / val / test (85/5/10 by default; val takes the rounding remainder)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_train = int(len(order) * fractions[0])
    n_test = int(len(order) * fractions[2])
    parts = {"train": order[:n_train], "test": order[n_train : n_train + n_test], "val": order[n_train + n_test :]}
    return {name: [examples[i] for i in idx] for name, idx in parts.items()}


def truncate(examples: list[Example], max_tokens: int) -> tuple[list[Example], int, int]:
    """Examples cut to `max_tokens` ids (inputs are one shorter), dropping any left with nothing to learn;
    returns the kept examples, how many were cut and how many dropped."""
    kept, cut, dropped = [], 0, 0
    for e in examples:
        if len(e.ids) > max_tokens:
            cut += 1
            e = Example(e.ids[:max_tokens], e.learn[:max_tokens], e.messages, e.where, e.record)
            if not any(e.learn[1:]):
                dropped += 1
                continue
        kept.append(e)
    return kept, cut, dropped


def collate(batch: Sequence[Example], pad_id: int, mask_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets `(B, L-1)` for examples of up to L ids. Inputs are padded with `<|endoftext|>`; targets
    are the next ids, -100 (ignored) beyond each example's own end token, and on prompt tokens with `mask_prompt`.
    Each example already ends with its end token, so padding starts right after the first one."""
    L = max(len(e.ids) for e in batch)
    x = torch.full((len(batch), L - 1), pad_id, dtype=torch.long)  # (B, L-1)
    y = torch.full((len(batch), L - 1), IGNORE_INDEX, dtype=torch.long)  # (B, L-1)
    for r, e in enumerate(batch):
        ids = torch.tensor(e.ids, dtype=torch.long)
        n = len(e.ids) - 1
        x[r, :n] = ids[:-1]
        target = ids[1:]
        if mask_prompt:
            target = target.masked_fill(~torch.tensor(e.learn[1:], dtype=torch.bool), IGNORE_INDEX)
        y[r, :n] = target
    return x, y


class InstructionData:
    """Length-bucketed batches of an instruction split: each epoch a seeded shuffle, cut into chunks of 16 batches
    whose examples are sorted by length (little padding), and the batches shuffled again."""

    BUCKET_BATCHES = 16

    def __init__(self, splits: dict[str, list[Example]], batch_size: int, seed: int, pad_id: int,
                 mask_prompt: bool = False):
        if not splits["train"]:
            raise DataError("the training split is empty: an instruction file needs at least 2 records")
        self.data, self.B, self.seed, self.pad_id, self.mask_prompt = splits, batch_size, seed, pad_id, mask_prompt
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            train = self.data["train"]
            g = random.Random(self.seed * 1_000_003 + epoch)
            order = list(range(len(train)))
            g.shuffle(order)
            batches = []
            chunk = self.B * self.BUCKET_BATCHES
            for s in range(0, len(order), chunk):
                part = sorted(order[s : s + chunk], key=lambda i: len(train[i].ids))
                batches += [part[j : j + self.B] for j in range(0, len(part), self.B)]
            g.shuffle(batches)
            self._epochs = {epoch: batches}
        return self._epochs[epoch]

    def batches_per_epoch(self) -> int:
        return -(-len(self.data["train"]) // self.B)

    def train_batch(self, k: int, rank: int = 0, world: int = 1):
        g = k * world + rank
        n = self.batches_per_epoch()
        idx = self.epoch_batches(g // n)[g % n]
        return collate([self.data["train"][i] for i in idx], self.pad_id, self.mask_prompt)

    def eval_batches(self, split: str, max_batches: int, rank: int = 0, world: int = 1, response_only=None):
        """A split in length order (the first `max_batches` batches); `response_only` overrides `mask_prompt`."""
        mask = self.mask_prompt if response_only is None else response_only
        examples = sorted(self.data.get(split, []), key=lambda e: len(e.ids))
        batches = [examples[i : i + self.B] for i in range(0, len(examples), self.B)][:max_batches]
        for b in batches[rank::world]:
            yield collate(b, self.pad_id, mask)

    def splits(self) -> tuple[str, ...]:
        return ("val",) if self.data.get("val") else ()
