"""Training data: text corpora as memory-mapped uint16 token shards, and instruction sets as rendered conversations.

Text (pretraining). Files, folders (searched for `TEXT_SUFFIXES`) and globs are read as UTF-8, each file one document
followed by `<|endoftext|>`, tokenised in parallel native threads (`Tokenizer.encode_ordinary_batch`) and written once
as uint16 shards with a `manifest.json` naming the sources (path, size, mtime). A later run with the same sources
reuses them; any change re-tokenises. The stream is split by position: the first `1 - val_fraction` of the tokens
train, the rest validate (the seed's 90/10 split of one text).

Instructions (fine-tuning). JSON (a list) or JSON lines of either the seed's `{"instruction", "input", "output"}` or
`{"messages": [{"role", "content"}, ...]}`, rendered by `gpt2tui.chat.encode_conversation` — the chat app's own code —
so training and chatting agree token for token. A seeded shuffle splits them 85/5/10 into train/val/test.

Batches are pure functions of a global micro-batch index `k` (plus rank and world size), so a run's data position is
just its step, and a resumed run reads exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt2tui.atomic import atomic_directory
from gpt2tui.chat import TEMPLATES, ChatError, encode_conversation
from gpt2tui.errors import DataError
from gpt2tui.tokenizer import Tokenizer

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB) per shard file
CHUNK_CHARS = 1 << 20  # long documents are cut into ~1 MB pieces so one big file still tokenises in parallel
BATCH_CHARS = 16 << 20  # characters handed to the native encoder at once
MANIFEST_VERSION = 1
IGNORE_INDEX = -100


def is_token_file(entry: Path) -> bool:
    """What a tokens directory holds: its manifest and shards (the rest is not ours to replace)."""
    return entry.name == "manifest.json" or (entry.name.startswith("tokens-") and entry.name.endswith(".bin"))


# -- text corpora --------------------------------------------------------------------------------------------------


def expand_paths(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly, text files under folders (recursively, hidden ones skipped), and glob matches."""
    files: list[Path] = []
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        path = Path(text)
        if path.is_dir():
            found = sorted(
                f for f in path.rglob("*")
                if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
            if not found:
                raise DataError(f"{text}: folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
        elif path.is_file():
            found = [path]
        elif globlib.has_magic(text):
            found = sorted(Path(m) for m in globlib.glob(text, recursive=True) if Path(m).is_file())
            if not found:
                raise DataError(f"{text}: the pattern matches no files")
        elif path.exists():
            raise DataError(f"{text}: not a regular file or folder (a device or a pipe?); pass text files or folders")
        else:
            raise DataError(f"{text}: no such file or folder")
        files.extend(found)
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def split_exact(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Pieces of about `size` characters whose tokens, concatenated, equal the tokens of the whole text. A piece
    ends with a single newline that follows a non-space and precedes a non-space: GPT-2's pre-tokenizer always
    breaks there, so cutting there changes nothing (a run of newlines or spaces could merge differently)."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while cut < len(text) - 1:
            cut = text.find("\n", cut)
            if cut < 0 or cut >= len(text) - 1:
                cut = -1
                break
            if cut > 0 and not text[cut - 1].isspace() and not text[cut + 1].isspace():
                break
            cut += 1
        if cut < 0 or cut >= len(text) - 1:
            break
        pieces.append(text[start : cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


def tokenize_documents(files: Sequence[Path], tokenizer: Tokenizer, num_threads: int) -> Iterator[np.ndarray]:
    """Each file's tokens then `<|endoftext|>`, as uint16 arrays in file order, encoded in parallel batches."""
    batch: list[str] = []
    ends: list[bool] = []  # whether each piece ends its document (gets the end-of-text token)
    chars = 0

    def flush():
        # As numpy arrays straight from the encoder: a Python int per token, and numpy's reading of them, would cost
        # as much again as the encoding.
        for ids, end in zip(tokenizer.encode_ordinary_batch_to_numpy(batch, num_threads=num_threads), ends,
                            strict=False):
            out = np.empty(len(ids) + end, dtype=np.uint16)
            out[: len(ids)] = ids
            if end:
                out[-1] = tokenizer.eot_token
            yield out
        batch.clear()
        ends.clear()

    for f in files:
        text = read_text(f)
        if not text.strip():
            continue
        pieces = split_exact(text)
        for i, piece in enumerate(pieces):
            batch.append(piece)
            ends.append(i == len(pieces) - 1)
            chars += len(piece)
        if chars >= BATCH_CHARS:
            yield from flush()
            chars = 0
    if batch:
        yield from flush()


class TokenStream:
    """A read-only view `[start, end)` of the tokens of a corpus's memory-mapped shards, as one array."""

    def __init__(self, shards: list[np.ndarray], start: int, end: int):
        self.shards, self.start, self.end = shards, start, end
        self.offsets = np.cumsum([0] + [len(s) for s in shards])  # global index of each shard's first token

    def __len__(self) -> int:
        return self.end - self.start

    def slice(self, a: int, b: int) -> np.ndarray:
        """Tokens `[a, b)` of this view (may cross shard boundaries)."""
        a, b = self.start + a, self.start + b
        out, i = [], int(np.searchsorted(self.offsets, a, side="right")) - 1
        while a < b:
            shard, base = self.shards[i], int(self.offsets[i])
            take = min(b, base + len(shard))
            out.append(shard[a - base : take - base])
            a, i = take, i + 1
        return out[0] if len(out) == 1 else np.concatenate(out)


@dataclass
class Corpus:
    manifest: dict
    train: TokenStream
    val: TokenStream


def _sources(files: Sequence[Path]) -> list[dict]:
    out = []
    for f in files:
        st = f.stat()
        out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _split_point(total: int, val_fraction: float) -> int:
    return total - int(round(total * val_fraction))


def open_corpus(directory: Path, val_fraction: float) -> Corpus:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        listed = [s for s in manifest["shards"] if s["tokens"]]
        total = manifest["tokens"]
    except (ValueError, KeyError, TypeError, RecursionError, OSError) as e:
        raise DataError(f"{directory / 'manifest.json'} is damaged ({type(e).__name__}); delete {directory} and run "
                        "again to tokenise the data anew") from None
    shards = []
    for s in listed:
        path = directory / s["file"]
        # A shard cut short (a full disk, a kill while copying) is found here, by its size, not as a crash later.
        if not path.is_file() or path.stat().st_size != 2 * s["tokens"]:
            raise DataError(f"token shard {path} is missing or has the wrong size (expected {s['tokens']} tokens); "
                            f"delete {directory} and run again to tokenise the data anew")
        shards.append(np.memmap(path, dtype=np.uint16, mode="r"))
    split = _split_point(total, val_fraction)
    return Corpus(manifest, TokenStream(shards, 0, split), TokenStream(shards, split, total))


def prepare_corpus(
    patterns: Sequence[str | os.PathLike],
    directory: Path,
    tokenizer: Tokenizer,
    val_fraction: float = 0.1,
    num_threads: int | None = None,
    log=None,
) -> Corpus:
    """Tokenise the corpus into `directory` once (reused while its sources are unchanged) and open it."""
    files = expand_paths(patterns)
    sources = _sources(files)
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
            if old.get("version") == MANIFEST_VERSION and old.get("sources") == sources:
                return open_corpus(directory, val_fraction)
        except (json.JSONDecodeError, OSError, KeyError):
            pass  # unreadable: tokenise again
    num_threads = num_threads or max(1, min(16, os.cpu_count() or 1))
    if log:
        log(f"tokenising {len(files)} file(s) with {num_threads} thread(s) into {directory}")
    with atomic_directory(directory, is_token_file) as tmp:
        shards, total, fh, in_shard = [], 0, None, 0
        try:
            for ids in tokenize_documents(files, tokenizer, num_threads):
                while len(ids):
                    if fh is None:
                        shards.append({"file": f"tokens-{len(shards):05d}.bin", "tokens": 0})
                        fh, in_shard = open(tmp / shards[-1]["file"], "wb"), 0
                    take = min(len(ids), SHARD_TOKENS - in_shard)
                    fh.write(ids[:take].tobytes())
                    shards[-1]["tokens"] += take
                    in_shard, total, ids = in_shard + take, total + take, ids[take:]
                    if in_shard == SHARD_TOKENS:
                        fh.close()
                        fh = None
        finally:
            if fh is not None:
                fh.close()
        if total == 0:
            raise DataError(f"the corpus is empty: {', '.join(str(f) for f in files[:3])}"
                            f"{' and more' if len(files) > 3 else ''} hold no text")
        manifest = {"version": MANIFEST_VERSION, "tokenizer": "gpt2", "dtype": "uint16", "tokens": total,
                    "documents": len(files), "sources": sources, "shards": shards}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return open_corpus(directory, val_fraction)


def tokenize_in_memory(patterns, tokenizer: Tokenizer, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The same tokens and split as `prepare_corpus`, without writing shards (for evaluation)."""
    files = expand_paths(patterns)
    parts = list(tokenize_documents(files, tokenizer, max(1, os.cpu_count() or 1)))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    if not len(ids):
        raise DataError(f"the corpus is empty: {', '.join(str(f) for f in files[:3])} hold no text")
    split = _split_point(len(ids), val_fraction)
    return ids[:split], ids[split:]


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


def load_examples(path: str | os.PathLike, tokenizer: Tokenizer, template: str = "alpaca") -> list[Example]:
    """Every record of an instruction file, checked and rendered with the chat template."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass one instruction file (.json or .jsonl)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    examples = []
    for line, record in _json_records(path):
        where = f"{path}:{line}"
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
