"""One reader per format: text, JSON lines (or one JSON list), Parquet, each maybe compressed, and Hugging Face
datasets. Nothing reads a whole file: text is decoded in chunks of `READ_BYTES` and cut into pieces as it comes, JSON
lines a line at a time, a JSON list element by element from a sliding window, Parquet a batch of rows at a time, and
`.gz` / `.zst` are decompressed as streams. Each reader names its bad records by file and line (or row, or index).
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import io
import json
import zlib
from pathlib import Path

from gpt2tui.errors import DataError

from . import records
from .records import HF_PREFIX, BadRecords, Options, Source, document, load_hf, record_text, split_exact

READ_BYTES = 1 << 20


class _FileSource(Source):
    def __init__(self, path: Path, options: Options, compression: str | None = None):
        self.path, self.options, self.compression, self.name = path, options, compression, str(path)
        try:
            st = path.stat()
        except OSError as e:
            raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
        self.size, self._mtime = st.st_size, st.st_mtime_ns
        self._raw = None
        self._state: dict = {}

    def key(self) -> dict:
        key = {"path": str(self.path.resolve()), "size": self.size, "mtime_ns": self._mtime}
        if not isinstance(self, TextSource):
            key["text_field"] = self.options.text_field
        return key

    def done(self) -> int:
        try:
            return self._raw.tell() if self._raw is not None and not self._raw.closed else 0
        except (OSError, ValueError):
            return 0

    def _open(self, offset: int = 0):
        """The file's (decompressed) bytes from `offset`: seeked when plain, read through when compressed."""
        try:
            self._raw = open(self.path, "rb")  # closed by the reader's `finally`
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        if self.compression is None:
            self._raw.seek(offset)
            return self._raw
        if self.compression == "gzip":
            stream = gzip.GzipFile(fileobj=self._raw, mode="rb")
        else:
            import zstandard  # the data extra's; checked by `open_sources`

            stream = io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(self._raw, read_across_frames=True), READ_BYTES
            )
        while offset > 0:
            got = len(stream.read(min(offset, READ_BYTES)))
            if not got:
                break
            offset -= got
        return stream

    def _damaged(self, e: Exception, bad: BadRecords) -> None:
        what = {"gzip": "gzip", "zstd": "zstd"}.get(self.compression or "", "")
        bad.add(
            self.name, f"damaged {what} stream ({type(e).__name__}: {e}); the rest of the file is skipped"
        )

    def _close(self):
        if self._raw is not None:
            self._raw.close()


def _stream_errors():
    errors: tuple = (EOFError, zlib.error, gzip.BadGzipFile)
    if importlib.util.find_spec("zstandard") is not None:
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


class TextSource(_FileSource):
    """A text file: one document, decoded and cut into pieces as it is read. The file is checked to be UTF-8 first,
    so a bad one is skipped whole instead of half-written."""

    def pieces(self, state, bad):
        offset = (state or {}).get("offset", 0)
        try:
            if not offset and not self._valid_utf8(bad):
                return
            stream = self._open(offset)
            decoder = codecs.getincrementaldecoder("utf-8")()
            buf, seen_text = "", offset > 0
            while True:
                chunk = stream.read(READ_BYTES)
                buf += decoder.decode(chunk, final=not chunk)
                if not chunk:
                    break
                # A document that is only space so far is held back: it may yet turn out to be empty.
                if len(buf) > 2 * records.CHUNK_CHARS and (seen_text or not buf.isspace()):
                    parts = split_exact(buf, records.CHUNK_CHARS)
                    for part in parts[:-1]:
                        offset += len(part.encode("utf-8"))
                        self._state = {"offset": offset}
                        seen_text = seen_text or not part.isspace()
                        yield part, False, True
                    buf = parts[-1]
            if buf and (seen_text or not buf.isspace()):
                for i, part in enumerate(parts := split_exact(buf, records.CHUNK_CHARS)):
                    offset += len(part.encode("utf-8"))
                    self._state = {"offset": offset}
                    yield part, i == len(parts) - 1, True
            elif seen_text:
                yield "", True, True  # the document's end token, after pieces that all came before
        except UnicodeDecodeError:  # the file changed after it was checked
            raise DataError(
                f"{self.path}: not UTF-8 text (it changed while being read?); convert it to UTF-8"
            ) from None
        except _stream_errors() as e:  # before OSError: gzip's BadGzipFile is one
            self._damaged(e, bad)
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        finally:
            self._close()

    def _valid_utf8(self, bad: BadRecords) -> bool:
        stream = self._open(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        at = 0
        try:
            while True:
                chunk = stream.read(READ_BYTES)
                decoder.decode(chunk, final=not chunk)
                if not chunk:
                    return True
                at += len(chunk)
        except UnicodeDecodeError as e:
            bad.add(
                self.name, f"not UTF-8 text (invalid byte near offset {at + e.start}); convert it to UTF-8"
            )
            return False
        finally:
            self._close()


class JSONSource(_FileSource):
    """JSON lines (or one JSON list) of objects whose text field is a document each."""

    def pieces(self, state, bad):
        state = state or {}
        try:
            stream = self._open(state.get("offset", 0))
            first = stream.peek(64)[:64] if hasattr(stream, "peek") else b""
            if "index" in state or first.lstrip()[:1] == b"[":
                yield from self._list(stream, state.get("index", 0), bad)
            else:
                yield from self._lines(stream, state.get("offset", 0), state.get("line", 0), bad)
        except _stream_errors() as e:  # before OSError: gzip's BadGzipFile is one
            self._damaged(e, bad)
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        finally:
            self._close()

    def _lines(self, stream, offset: int, line: int, bad: BadRecords):
        for raw in stream:
            offset += len(raw)
            line += 1
            if not raw.strip():
                continue
            where = f"{self.name}:{line}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                bad.add(where, f"not UTF-8 (invalid byte at column {e.start + 1})")
                continue
            except json.JSONDecodeError as e:
                bad.add(where, f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            except (RecursionError, ValueError):
                bad.add(where, "the record is nested too deeply or holds a number too long")
                continue
            self._state = {"offset": offset, "line": line}
            yield from document(record_text(record, self.options.text_field, where, bad))

    def _list(self, stream, skip: int, bad: BadRecords):
        """The elements of one JSON list, decoded from a sliding window: the file is never held whole."""
        text = io.TextIOWrapper(stream, encoding="utf-8")
        dec, buf, pos, line, eof, index = json.JSONDecoder(), "", 0, 1, False, 0

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            chunk = text.read(
                max(READ_BYTES, len(buf) - pos)
            )  # doubling: a huge element is parsed O(log n) times
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0
            return not eof

        def skip_space() -> str:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not more():
                    return buf[pos] if pos < len(buf) else ""

        try:
            if skip_space() != "[":
                bad.add(self.name, "not a JSON list nor JSON lines; the file is skipped")
                return
            pos += 1
            expect_value = skip_space() != "]"
            while expect_value:
                while True:
                    try:
                        value, end = dec.raw_decode(buf, pos)
                        if end < len(buf) or eof:
                            break
                    except json.JSONDecodeError:
                        if eof:
                            raise
                    more()
                where = f"{self.name}:{line}"
                line += buf.count("\n", pos, end)
                pos = end
                if index >= skip:
                    self._state = {"index": index + 1}
                    yield from document(record_text(value, self.options.text_field, where, bad))
                index += 1
                c = skip_space()
                if c == "]":
                    break
                if c != ",":
                    raise json.JSONDecodeError("expected ',' or ']' after a record", buf, pos)
                pos += 1
                skip_space()
        except UnicodeDecodeError as e:
            bad.add(f"{self.name}:{line}", f"not UTF-8 ({e.reason}); the rest of the file is skipped")
        except json.JSONDecodeError as e:
            bad.add(f"{self.name}:{line}", f"malformed JSON ({e.msg}); the rest of the file is skipped")
        except (RecursionError, ValueError):
            bad.add(
                f"{self.name}:{line}", "a record nested too deeply or a number too long; the rest is skipped"
            )


class ParquetSource(_FileSource):
    """A Parquet file's text column, a batch of rows at a time (memory: about one row group)."""

    BATCH_ROWS = 1024

    def pieces(self, state, bad):
        import pyarrow as pa  # the data extra's; checked by `open_sources`
        import pyarrow.parquet as pq

        row = (state or {}).get("row", 0)
        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as e:
            bad.add(self.name, f"not a readable Parquet file ({e}); the file is skipped")
            return
        field = self.options.text_field
        schema = pf.schema_arrow
        if schema.get_field_index(field) < 0:
            raise DataError(
                f"{self.path}: no column {field!r} (columns: {', '.join(schema.names)}); pass "
                "--text-field with the column that holds the text"
            )
        kind = schema.field(field).type
        is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        if not (is_text or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise DataError(
                f"{self.path}: column {field!r} holds {kind}, not text; pass --text-field with the "
                "column that holds the text"
            )
        total = pf.metadata.num_rows
        first = 0
        try:
            for g in range(pf.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if first + n <= row:
                    first += n
                    continue
                at = first
                for batch in pf.iter_batches(batch_size=self.BATCH_ROWS, row_groups=[g], columns=[field]):
                    for value in batch.column(0).to_pylist():
                        at += 1
                        if at <= row:
                            continue
                        self._done = int(self.size * at / max(1, total))
                        self._state = {"row": at}
                        where = f"{self.name}: row {at}"
                        if isinstance(value, bytes):
                            try:
                                value = value.decode("utf-8")
                            except UnicodeDecodeError as e:
                                bad.add(where, f"not UTF-8 (invalid byte at offset {e.start})")
                                continue
                        yield from document(record_text({field: value}, field, where, bad))
                first += n
                # Arrow's allocator keeps freed row groups' buffers for reuse, and its pools grow with the file
                # otherwise: handed back after each group, the reader's memory stays about one row group.
                pa.default_memory_pool().release_unused()
        except (pa.ArrowException, OSError) as e:
            bad.add(self.name, f"damaged Parquet data ({e}); the rest of the file is skipped")

    def done(self) -> int:
        return getattr(self, "_done", 0)


class HFSource(Source):
    """A Hugging Face dataset streamed through `datasets` (never downloaded whole); resumed from its state dict."""

    def __init__(self, dataset: str, options: Options):
        self.dataset, self.options = dataset, options
        self.name = HF_PREFIX + dataset
        self._ds = None
        self._index = 0

    def key(self) -> dict:
        return {
            "hf": self.dataset,
            "config": self.options.config,
            "split": self.options.split,
            "text_field": self.options.text_field,
        }

    def state(self) -> dict:
        return {"index": self._index, "hf": self._ds.state_dict()}

    def pieces(self, state, bad):
        ds = load_hf(self.dataset, self.options.config, self.options.split, streaming=True)
        field = self.options.text_field
        names = getattr(ds, "column_names", None)
        if names and field not in names:
            raise DataError(
                f"{self.name}: no field {field!r} (fields: {', '.join(names)}); pass --text-field with "
                "the one that holds the text"
            )
        if state:
            ds.load_state_dict(state["hf"])
            self._index = state["index"]
        self._ds = ds
        for record in ds:
            self._index += 1
            yield from document(record_text(record, field, f"{self.name}[{self._index - 1}]", bad))
