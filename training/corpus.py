"""Pretraining corpora as memory-mapped uint16 token shards, written once by streaming the sources through the
native batch encoder.

`prepare_corpus` reads `--data` (see `sources.py`), each document followed by `<|endoftext|>`, and writes
`tokens-NNNNN.bin` shards into the tokens directory. After every batch the shards are synced and `progress.json`
(what is done: shards, counts, and where each source's reading stands) is replaced atomically, so an interrupted
run carries on from its last batch; at the end `manifest.json` takes its place. A later run with the same sources
and settings reuses the shards; any change tokenises anew. The stream is split by position: the first
`1 - val_fraction` of the tokens train, the rest validate (the seed's 90/10 split of one text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from gpt2tui.atomic import check_replaceable, naming_errors, write_atomic
from gpt2tui.errors import DataError
from gpt2tui.tokenizer import Tokenizer

from .feed import TokenizeProgress, batches, read_ahead
from .sources import BadRecords, Options, open_sources

SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB) per shard file
CHECKPOINT_BYTES = 64 << 20  # text between two records of progress (each syncs the shard): ~a second of work
MANIFEST_VERSION = 2


def is_token_file(entry: Path) -> bool:
    """What a tokens directory holds: its manifest, progress and shards (the rest is not ours to replace)."""
    return entry.name in ("manifest.json", "progress.json") or (
        entry.name.startswith("tokens-") and entry.name.endswith(".bin")
    )


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


def _split_point(total: int, val_fraction: float) -> int:
    return total - int(round(total * val_fraction))


def open_corpus(directory: Path, val_fraction: float) -> Corpus:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        listed = [s for s in manifest["shards"] if s["tokens"]]
        total = manifest["tokens"]
    except (ValueError, KeyError, TypeError, RecursionError, OSError) as e:
        raise DataError(
            f"{directory / 'manifest.json'} is damaged ({type(e).__name__}); delete {directory} and run "
            "again to tokenise the data anew"
        ) from None
    shards = []
    for s in listed:
        path = directory / s["file"]
        # A shard cut short (a full disk, a kill while copying) is found here, by its size, not as a crash later.
        if not path.is_file() or path.stat().st_size != 2 * s["tokens"]:
            raise DataError(
                f"token shard {path} is missing or has the wrong size (expected {s['tokens']} tokens); "
                f"delete {directory} and run again to tokenise the data anew"
            )
        shards.append(np.memmap(path, dtype=np.uint16, mode="r"))
    split = _split_point(total, val_fraction)
    return Corpus(manifest, TokenStream(shards, 0, split), TokenStream(shards, split, total))


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class ShardWriter:
    """Appends tokens to `tokens-NNNNN.bin` files of `SHARD_TOKENS` each; `shards` lists them with their counts."""

    def __init__(self, directory: Path, shards: list[dict]):
        self.directory, self.shards, self.fh = directory, shards, None
        if shards and shards[-1]["tokens"] < SHARD_TOKENS:
            # Resuming: whatever was written after the last recorded batch is cut off.
            self.fh = open(directory / shards[-1]["file"], "r+b")  # noqa: SIM115 - closed by `close`
            self.fh.truncate(2 * shards[-1]["tokens"])
            self.fh.seek(0, os.SEEK_END)

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.fh is None:
                self.shards.append({"file": f"tokens-{len(self.shards):05d}.bin", "tokens": 0})
                self.fh = open(self.directory / self.shards[-1]["file"], "wb")  # noqa: SIM115 - closed by `close`
            take = min(len(ids), SHARD_TOKENS - self.shards[-1]["tokens"])
            self.fh.write(ids[:take].tobytes())
            self.shards[-1]["tokens"] += take
            ids = ids[take:]
            if self.shards[-1]["tokens"] == SHARD_TOKENS:
                self.sync()
                self.fh.close()
                self.fh = None

    def sync(self) -> None:
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _start(directory: Path, keys: list, settings: dict) -> dict:
    """The progress of an interrupted run on the same sources (checked against the shards on disk), or a fresh
    start with this directory's old token files removed."""
    progress = _read_json(directory / "progress.json")
    if (
        progress
        and progress.get("version") == MANIFEST_VERSION
        and progress.get("sources") == keys
        and progress.get("settings") == settings
    ):
        try:
            shards = progress["shards"]
            intact = all(
                (directory / s["file"]).is_file()
                and (directory / s["file"]).stat().st_size >= 2 * s["tokens"]
                for s in shards
            )
            listed = {s["file"] for s in shards}
            if intact:
                for extra in directory.glob("tokens-*.bin"):  # begun after the last recorded batch
                    if extra.name not in listed:
                        extra.unlink()
                return progress
        except (KeyError, TypeError, OSError):
            pass
    (directory / "manifest.json").unlink(missing_ok=True)  # first: old shards are never taken for new ones
    for entry in directory.iterdir():
        if is_token_file(entry) and entry.is_file():
            entry.unlink()
    return {
        "version": MANIFEST_VERSION,
        "sources": keys,
        "settings": settings,
        "shards": [],
        "tokens": 0,
        "documents": 0,
        "position": None,
        "bad_records": {"count": 0, "examples": []},
    }


def prepare_corpus(
    patterns: Sequence[str | os.PathLike],
    directory: Path,
    tokenizer: Tokenizer,
    val_fraction: float = 0.1,
    num_threads: int | None = None,
    log=None,
    options: Options | None = None,
    console: Console | None = None,
) -> Corpus:
    """Tokenise the corpus into `directory` once (reused while its sources are unchanged; resumed when interrupted)
    and open it. `log` receives one-line messages; `console` shows the progress bar."""
    options = options or Options()
    sources = open_sources(patterns, options)
    keys = [s.key() for s in sources]
    settings = {"tokenizer": "gpt2", "dtype": "uint16"}
    directory = Path(directory)
    manifest = _read_json(directory / "manifest.json")
    if (
        manifest
        and manifest.get("version") == MANIFEST_VERSION
        and manifest.get("sources") == keys
        and manifest.get("settings") == settings
    ):
        return open_corpus(directory, val_fraction)
    check_replaceable(directory, is_token_file, "--tokens-dir")
    directory.mkdir(parents=True, exist_ok=True)
    num_threads = num_threads or max(1, min(16, os.cpu_count() or 1))
    with naming_errors(directory):
        state = _start(directory, keys, settings)
        if log:
            again = f", carrying on after {state['documents']:,} documents" if state["position"] else ""
            log(f"tokenising {len(sources)} source(s) with {num_threads} thread(s) into {directory}{again}")
        bad = BadRecords(options.strict, **state["bad_records"])
        writer = ShardWriter(directory, state["shards"])
        eot = np.array([tokenizer.eot_token], dtype=np.uint32)
        total_size = None if any(s.size is None for s in sources) else sum(s.size for s in sources)
        progress = TokenizeProgress(console, total_size, state["documents"], state["tokens"])
        unrecorded = 0
        try:
            with progress:
                for batch in read_ahead(batches(sources, state["position"], bad)):
                    parts = []
                    encoded = tokenizer.encode_ordinary_batch_to_numpy(batch.texts, num_threads=num_threads)
                    for ids, end in zip(encoded, batch.ends, strict=True):
                        parts += (ids, eot) if end else (ids,)
                    ids = np.concatenate(parts).astype(np.uint16) if parts else np.zeros(0, np.uint16)
                    writer.write(ids)
                    progress.advance(batch, len(ids))
                    state.update(
                        tokens=state["tokens"] + len(ids),
                        documents=progress.documents,
                        position=batch.position,
                        bad_records=batch.bad,
                    )
                    unrecorded += batch.text_bytes
                    if unrecorded >= CHECKPOINT_BYTES:
                        writer.sync()  # the tokens first: progress.json never claims more than is on disk
                        write_atomic(directory / "progress.json", json.dumps(state) + "\n")
                        unrecorded = 0
            writer.sync()
        finally:
            writer.close()
        if state["tokens"] == 0:
            names = ", ".join(s.name for s in sources[:3]) + (" and more" if len(sources) > 3 else "")
            raise DataError(f"the corpus is empty: {names} hold no text")
        manifest = {
            "version": MANIFEST_VERSION,
            **settings,
            "settings": settings,
            "tokens": state["tokens"],
            "documents": state["documents"],
            "bad_records": state["bad_records"],
            "sources": keys,
            "shards": state["shards"],
        }
        write_atomic(directory / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        (directory / "progress.json").unlink(missing_ok=True)
    if log:
        log(
            f"tokenised {state['documents']:,} documents into {state['tokens']:,} tokens "
            f"({progress.text_bytes / 1e6:,.2f} MB at {progress.mb_per_s():,.1f} MB/s)"
        )
        if bad.count:
            log(f"[yellow]warning:[/] {bad.summary()} (add --strict to refuse them instead)")
    return open_corpus(directory, val_fraction)


def tokenize_in_memory(
    patterns, tokenizer: Tokenizer, val_fraction: float = 0.1, options: Options | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The same tokens and split as `prepare_corpus`, without writing shards (for evaluation)."""
    sources = open_sources(patterns, options)
    bad = BadRecords((options or Options()).strict)
    parts = []
    for batch in batches(sources, None, bad):
        encoded = tokenizer.encode_ordinary_batch_to_numpy(
            batch.texts, num_threads=max(1, os.cpu_count() or 1)
        )
        for ids, end in zip(encoded, batch.ends, strict=True):
            parts.append(ids.astype(np.uint16))
            if end:
                parts.append(np.array([tokenizer.eot_token], dtype=np.uint16))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    if not len(ids):
        raise DataError(f"the corpus is empty: {', '.join(s.name for s in sources[:3])} hold no text")
    split = _split_point(len(ids), val_fraction)
    return ids[:split], ids[split:]
