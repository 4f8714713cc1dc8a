"""What every reader shares: the options that turn records into documents, the tally of bad records, the cutting of
long texts into pieces that tokenise like the whole, and the `Source` every reader is.

A source's `pieces(state, bad)` yields `(text, ends_document, boundary)`; after a boundary piece, `state()` is a
JSON-able point that `pieces` resumes from. A record's pieces have one boundary, after its last: the record is in
memory anyway, and its resume point is after it. A text file's pieces are each a boundary: it may be larger than
memory, and is resumed inside.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gpt2tui.errors import DataError

# Long documents are cut into ~64K-character pieces so that one big file still tokenises in parallel.
CHUNK_CHARS = 1 << 16
HF_PREFIX = "hf:"
EXTRA = "pip install 'gpt2tui[data]'"
# What each optional format needs: (module, what reads it).
NEEDS = {
    "zstd": ("zstandard", ".zst files"),
    "parquet": ("pyarrow", ".parquet files"),
    "hf": ("datasets", "hf: datasets"),
}


@dataclass(frozen=True)
class Options:
    """How records become documents: the field holding the text, the Hugging Face config and split, strictness."""

    text_field: str = "text"
    config: str | None = None
    split: str = "train"
    strict: bool = False


class BadRecords:
    """Records that were skipped: how many, and the first few by name. With `strict` the first one is an error."""

    SHOWN = 5

    def __init__(self, strict: bool = False, count: int = 0, examples: Sequence[str] = ()):
        self.strict, self.count, self.examples = strict, count, list(examples)

    def add(self, where: str, why: str) -> None:
        if self.strict:
            raise DataError(
                f"{where}: {why}; fix or remove that record, or leave out --strict to skip bad records"
            )
        self.count += 1
        if len(self.examples) < self.SHOWN:
            self.examples.append(f"{where}: {why}")

    def snapshot(self) -> dict:
        return {"count": self.count, "examples": list(self.examples)}

    def summary(self) -> str:
        more = f"; and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
        return f"skipped {self.count:,} bad record(s): " + "; ".join(self.examples) + more


def require(kind: str) -> None:
    """A clear error, before any work, when the package a format needs is not installed."""
    module, what = NEEDS[kind]
    if importlib.util.find_spec(module) is None:
        raise DataError(f"reading {what} needs the {module} package; install it with: {EXTRA}")


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


class Source:
    """One file or dataset. `pieces(state, bad)` yields `(text, ends_document, boundary)`; after a boundary piece
    `state()` is a JSON-able point that `pieces` resumes from, and `done()` how much of `size` is read."""

    name: str
    size: int | None = None

    def key(self) -> dict:
        raise NotImplementedError

    def pieces(self, state: dict | None, bad: BadRecords) -> Iterator[tuple[str, bool, bool]]:
        raise NotImplementedError

    def state(self) -> dict:
        return dict(self._state)

    def done(self) -> int:
        return 0


def load_hf(name: str, config: str | None, split: str, streaming: bool):
    """`datasets.load_dataset`, its failures (offline, no such dataset, config or split) as one-line errors."""
    require("hf")
    import datasets  # the data extra's (~2 s to import): only hf: sources pay for it

    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except (ConnectionError, OSError) as e:
        raise DataError(
            f"hf:{name}: cannot be loaded ({_first_line(e)}); check the name and that the Hugging Face "
            "hub can be reached, or pass local files"
        ) from None
    except ValueError as e:
        raise DataError(
            f"hf:{name}: {_first_line(e)}; choose one with --data-config / --data-split"
        ) from None
    except Exception as e:  # datasets raises its own types (DatasetNotFoundError, ...) for a wrong name
        raise DataError(f"hf:{name}: cannot be loaded ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def record_text(record: object, field: str, where: str, bad: BadRecords) -> str | None:
    """The document in a record, or None (counted as bad) when the record has no such string field."""
    if not isinstance(record, dict):
        bad.add(where, f"expected a JSON object with a {field!r} field, got {type(record).__name__}")
        return None
    if field not in record or record[field] is None:
        bad.add(where, f"no {field!r} field (pass --text-field to read another one)")
        return None
    value = record[field]
    if not isinstance(value, str):
        bad.add(where, f"field {field!r} must be a string, got {type(value).__name__}")
        return None
    return value


def document(text: str | None) -> Iterator[tuple[str, bool, bool]]:
    """A record's document as pieces; only its last is a boundary (the record's resume point is after it)."""
    if text is None or not text.strip():
        return
    parts = split_exact(text, CHUNK_CHARS)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        yield part, last, last


def hf_records(name: str, config: str | None = None, split: str = "train") -> Iterator[tuple[str, object]]:
    """`(where, record)` for each record of a Hugging Face dataset (instruction sets are small: no streaming)."""
    for i, record in enumerate(load_hf(name, config, split, streaming=False)):
        yield f"{HF_PREFIX}{name}[{i}]", record
