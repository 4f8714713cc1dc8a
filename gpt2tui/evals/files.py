"""Reading a task's data: a local copy in the task's own format, or the Hugging Face dataset through `datasets`.

Local files: JSON lines (`.jsonl`), a JSON list (`.json`), Parquet (`.parquet`, needs pyarrow: `gpt2tui[data]`), plain
text (`.txt`, `.raw`, `.tokens`), each also gzip-compressed (`.gz`). Every bad record names its file and line and
what to do, as a `DataError` (one line on the command line, never a traceback).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

from gpt2tui.errors import DataError

TEXT_SUFFIXES = (".txt", ".raw", ".tokens")


def _suffixes(path: Path) -> tuple[str, bool]:
    """(the format's suffix, gzip-compressed)."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    return Path(name[:-3] if gz else name).suffix, gz


def _open_text(path: Path, gz: bool) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if gz else open(path, "rb")  # the wrapper closes it
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def _check(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"--data {path}: no such file; pass the task's data file (the README's evaluation section "
            "lists each task's formats), or leave --data out to download it"
        )
    return path


def read_text(path: str | Path) -> str:
    """A plain text file's whole text (gzip allowed)."""
    path = _check(Path(path))
    suffix, gz = _suffixes(path)
    try:
        with _open_text(path, gz) as f:
            return f.read()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read as UTF-8{' gzip' if gz else ''} text ({e})") from e


def read_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """`(where, record)` for each record of a JSON lines, JSON list or Parquet file; `where` is `file:line` (or
    `file:row`) for messages."""
    path = _check(Path(path))
    suffix, gz = _suffixes(path)
    if suffix == ".parquet":
        if gz:
            raise DataError(f"{path}: Parquet compresses itself; pass the .parquet file without gzip")
        yield from _parquet(path)
    elif suffix == ".jsonl":
        yield from _jsonl(path, gz)
    elif suffix == ".json":
        yield from _json_list(path, gz)
    else:
        raise DataError(
            f"{path}: unknown format {suffix or '(no suffix)'!r}; pass .jsonl, .json or .parquet "
            "(optionally .gz), as the README's evaluation section describes"
        )


def _jsonl(path: Path, gz: bool) -> Iterator[tuple[str, dict]]:
    try:
        with _open_text(path, gz) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object"
                    ) from e
                if not isinstance(record, dict):
                    raise DataError(
                        f"{path}:{n}: a JSON {type(record).__name__}, not an object; each line must be "
                        "one JSON object"
                    )
                yield f"{path}:{n}", record
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from e


def _json_list(path: Path, gz: bool) -> Iterator[tuple[str, dict]]:
    try:
        with _open_text(path, gz) as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from e
    if not isinstance(data, list):
        raise DataError(
            f"{path}: a .json file must hold a list of objects (or use .jsonl, one object a line)"
        )
    for n, record in enumerate(data, 1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: item {n} is a JSON {type(record).__name__}, not an object")
        yield f"{path}: item {n}", record


def _parquet(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq  # optional: only Parquet files need it
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow; pip install 'gpt2tui[data]'") from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError kinds for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    for n, record in enumerate(table.to_pylist(), 1):
        yield f"{path}: row {n}", record


def from_hub(name: str, config: str | None, split: str) -> Iterator[tuple[str, dict]]:
    """The records of a Hugging Face dataset split, through `datasets` (needs the network, or its cache)."""
    try:
        import datasets  # optional: only a download needs it
    except ImportError as e:
        raise DataError(
            f"no --data given and `datasets` is not installed to download {name}; pass --data FILE, or "
            "pip install 'gpt2tui[data]'"
        ) from e
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, hub errors: all the same advice
        raise DataError(
            f"could not load {name}{f' ({config})' if config else ''}, split {split}, through `datasets` "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass a local copy with "
            "--data FILE"
        ) from e
    for n, record in enumerate(ds, 1):
        yield f"{name} ({split} split) row {n}", record


def field(record: dict, key: str, kind: type | tuple[type, ...], where: str):
    """`record[key]`, which must be there and of `kind`; else a DataError naming the record."""
    if key not in record:
        raise DataError(
            f"{where}: no {key!r} field; this task's records need it (see the README's evaluation section)"
        )
    value = record[key]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{where}: {key!r} is a {type(value).__name__}, not a {names}")
    return value
