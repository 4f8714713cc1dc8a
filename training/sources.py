"""Where pretraining text comes from: `--data` named as sources, each read by its format's reader (`readers.py`),
which yields the corpus's documents as text pieces.

`--data` names files, folders and globs of any mix of:

- text (`.txt`, `.md`, `.text`, `.rst`, or any file named directly): the whole file is one document;
- JSON lines (`.jsonl`, `.ndjson`, `.json`), one object per line whose `text` field (or `--text-field`) is a
  document; a `.json` file that is one JSON list of such objects is read element by element;
- either of those compressed (`.gz`, `.zst`), decompressed as a stream;
- Parquet (`.parquet`), the `text` column read a batch of rows at a time;
- `hf:NAME`, a Hugging Face dataset streamed through `datasets` (`--data-config`, `--data-split`).

Nothing reads a whole file: text is decoded in chunks and cut into ~`CHUNK_CHARS` pieces whose tokens, concatenated,
are the whole document's (`split_exact`), so a file far larger than memory streams like any other. Every reader keeps
a resume point (`state()`), valid after each piece marked as a boundary, from which `pieces(state)` carries on.

Bad records (not UTF-8, malformed JSON, no such field, a field that is not a string, a damaged compressed stream) are
counted and skipped, the first few named by file and line (`BadRecords`), or refused with `--strict`. The formats
beyond text need the `data` extra (`pip install 'gpt2tui[data]'`): zstandard, pyarrow, datasets, imported only by the
reader that needs them.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Sequence
from pathlib import Path

from gpt2tui.errors import DataError

from .readers import HFSource, JSONSource, ParquetSource, TextSource
from .records import HF_PREFIX, BadRecords, Options, Source, hf_records, require, split_exact

__all__ = [
    "HF_PREFIX",
    "BadRecords",
    "Options",
    "Source",
    "expand_paths",
    "hf_records",
    "open_sources",
    "source_names",
    "split_exact",
]

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}


def file_format(path: Path) -> tuple[str, str | None] | None:
    """`(format, compression)` by the file's suffixes: format "text", "json" or "parquet"; None if not data."""
    name = path.name.lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = kind, name[: -len(suffix)]
    if name.endswith(TEXT_SUFFIXES):
        return "text", compression
    if name.endswith(JSON_SUFFIXES):
        return "json", compression
    if name.endswith(PARQUET_SUFFIXES) and compression is None:
        return "parquet", None
    return None


def expand_paths(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly, data files under folders (recursively, hidden ones skipped), and glob matches;
    `hf:` names are not files and are left out."""
    files: list[Path] = []
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        if text.startswith(HF_PREFIX):
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(
                f
                for f in path.rglob("*")
                if f.is_file()
                and file_format(f) is not None
                and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
            if not found:
                raise DataError(
                    f"{text}: folder holds no data files (text {', '.join(TEXT_SUFFIXES)}; JSON lines "
                    f"{', '.join(JSON_SUFFIXES)}; .parquet; any of the first two as .gz or .zst)"
                )
        elif path.is_file():
            found = [path]
        elif globlib.has_magic(text):
            found = sorted(Path(m) for m in globlib.glob(text, recursive=True) if Path(m).is_file())
            if not found:
                raise DataError(f"{text}: the pattern matches no files")
        elif path.exists():
            raise DataError(
                f"{text}: not a regular file or folder (a device or a pipe?); pass data files or folders"
            )
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


def open_sources(patterns: Sequence[str | os.PathLike], options: Options | None = None) -> list[Source]:
    """The sources `--data` names, in order, with any missing optional package reported before any work."""
    options = options or Options()
    sources: list[Source] = []
    for pattern in patterns:
        text = os.fspath(pattern)
        if text.startswith(HF_PREFIX):
            if not text[len(HF_PREFIX) :].strip():
                raise DataError(f"{text}: name a dataset after hf:, e.g. hf:HuggingFaceFW/fineweb-edu")
            require("hf")
            sources.append(HFSource(text[len(HF_PREFIX) :].strip(), options))
            continue
        for f in expand_paths([pattern]):
            kind, compression = file_format(f) or ("text", None)  # a file named directly is text by default
            if compression == "zstd":
                require("zstd")
            if kind == "parquet":
                require("parquet")
                sources.append(ParquetSource(f, options))
            elif kind == "json":
                sources.append(JSONSource(f, options, compression))
            else:
                sources.append(TextSource(f, options, compression))
    if options.config is not None and not any(isinstance(s, HFSource) for s in sources):
        raise DataError(
            "--data-config chooses a Hugging Face dataset's configuration; it needs an hf: name in --data"
        )
    return sources


def source_names(patterns: Sequence[str | os.PathLike]) -> list[str]:
    """What a run records as its data: each file's resolved path, and `hf:NAME` for a dataset."""
    names = []
    for pattern in patterns:
        text = os.fspath(pattern)
        if text.startswith(HF_PREFIX):
            names.append(HF_PREFIX + text[len(HF_PREFIX) :].strip())
        else:
            names.extend(str(f.resolve()) for f in expand_paths([pattern]))
    return names
