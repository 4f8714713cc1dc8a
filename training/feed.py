"""Documents gathered into batches for the native encoder, read ahead by a thread, and the tokenising progress bar.

A batch is cut only where its last source can resume (`Source.state()` after a boundary piece), and carries that
resume point: once a batch's tokens are on disk, its `position` is where an interrupted run carries on. Reading
(decompressing, parsing JSON) happens in a thread while the encoder, which releases the GIL, works on the batch
before; the queue between them holds at most `AHEAD` batches, so memory stays that of a few batches (a few MB of
text) whatever the corpus's size.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from .sources import BadRecords, Source

BATCH_CHARS = 2 << 20  # characters handed to the native encoder at once
AHEAD = 1  # batches read ahead: one is enough to overlap reading with encoding


@dataclass
class Batch:
    texts: list[str]
    ends: list[bool]  # whether each piece ends its document (and gets the end-of-text token)
    text_bytes: int
    position: dict  # {"source": i, "state": ...}: where reading carries on after this batch
    bad: dict  # the bad-record tally up to here
    done: int  # progress in bytes of the sources, for the bar


def batches(
    sources: Sequence[Source], position: dict | None, bad: BadRecords, batch_chars: int | None = None
) -> Iterator[Batch]:
    """The sources' pieces from `position` on, in batches of about `batch_chars` characters."""
    batch_chars = batch_chars or BATCH_CHARS
    position = position or {"source": 0, "state": None}
    start = position["source"]
    before = sum(s.size or 0 for s in sources[:start])  # progress of the sources already done
    texts: list[str] = []
    ends: list[bool] = []
    chars = nbytes = 0
    for i in range(start, len(sources)):
        src = sources[i]
        for text, end, boundary in src.pieces(position["state"] if i == start else None, bad):
            texts.append(text)
            ends.append(end)
            chars += len(text)
            nbytes += len(text.encode("utf-8"))
            if boundary and chars >= batch_chars:
                yield Batch(
                    texts,
                    ends,
                    nbytes,
                    {"source": i, "state": src.state()},
                    bad.snapshot(),
                    before + src.done(),
                )
                texts, ends, chars, nbytes = [], [], 0, 0
        before += src.size or 0
    if texts:
        yield Batch(texts, ends, nbytes, {"source": len(sources), "state": None}, bad.snapshot(), before)


def read_ahead(items: Iterator[Batch], depth: int = AHEAD) -> Iterator[Batch]:
    """`items`, produced by a thread up to `depth` ahead; its errors are raised here, and leaving the loop early
    (an error, Ctrl+C) stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", done))
        except BaseException as e:  # handed to the consumer, which raises it
            put(("error", e))

    thread = threading.Thread(target=produce, name="gpt2tui-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


class TokenizeProgress:
    """Documents, tokens, MB/s and ETA while tokenising; a bar when the sources' size is known."""

    def __init__(
        self, console: Console | None, total: int | None, documents: int = 0, tokens: int = 0, done: int = 0
    ):
        self.documents, self.tokens, self.text_bytes = documents, tokens, 0
        self.started = time.monotonic()
        disable = console is None or not console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]tokenise"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            disable=disable,
        )
        self.task = self.progress.add_task("tokenise", total=total or None, completed=done, info=self._info())

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def mb_per_s(self) -> float:
        return self.text_bytes / 1e6 / max(1e-9, time.monotonic() - self.started)

    def _info(self) -> str:
        return f"{self.documents:,} docs · {self.tokens:,} tokens · {self.mb_per_s():.1f} MB/s"

    def advance(self, batch: Batch, tokens: int) -> None:
        self.documents += sum(batch.ends)
        self.tokens += tokens
        self.text_bytes += batch.text_bytes
        self.progress.update(self.task, completed=batch.done, info=self._info())
