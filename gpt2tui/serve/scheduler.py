"""Continuous batching: one thread owns the model and serves every request's rows in shared forward passes.

Each request is one row per choice (`n`, and each prompt of a list). Rows live in the slots of one static `KVCache`
of `max_batch` rows, kept packed: decoding rows in slots `[0, n_dec)`, rows still prefilling in `[n_dec, n_active)`,
so that each kind of work is one forward over a contiguous view of the cache (`KVCache.rows`). Each step:

1. waiting rows join free slots (they wait in a bounded queue; a full queue refuses at once: the HTTP side says 429);
2. rows whose client left, or that finished, leave: the last row of their region moves into their slot;
3. prefilling rows run one chunk of their prompt, together, at most `prefill_chunk` tokens in all (padding counted),
   so a long prompt takes several steps and never stalls the decoding rows for long; a row whose prompt is done
   samples its first token and moves into the decoding region;
4. all decoding rows run one token each, in one forward, and sample their next token.

A cancelled row leaves at the next step boundary: no forward starts for it after `Ticket.cancel()`. Results go to the
asyncio side as events on the request's `Ticket`: each step's events in one `loop.call_soon_threadsafe`.

Why packed slots rather than a gather of scattered rows: a slice of the cache is a view and costs nothing, a gather
copies every layer's keys and values each step; packing costs one row's copy when a row leaves.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..cache import KVCache
from ..generate import TextAssembler
from ..model import GPT2
from ..threads import governor_for
from ..tokenizer import Tokenizer
from .sampler import RowParams, RowSampling, Sampled, sample_rows

DEFAULT_PREFILL_CHUNK = 256


class QueueFull(Exception):
    """No room in the waiting queue for a request's rows."""

    def __init__(self, waiting: int, capacity: int):
        super().__init__(f"{waiting} rows are waiting and the queue holds {capacity}")
        self.waiting = waiting
        self.capacity = capacity


class SchedulerClosed(Exception):
    """The scheduler is shutting down and takes no new requests."""


@dataclass(frozen=True)
class TokenEvent:
    index: int  # the row's place in its request (the choice index)
    token: int
    text: (
        str  # the text this token completes: "" while half a character or a possible stop string is held back
    )
    sampled: Sampled


@dataclass(frozen=True)
class DoneEvent:
    index: int
    finish_reason: str  # "eos", "stop", "length", "cancelled" or "error"
    text: str  # the held-back text released at the end
    completion_tokens: int
    prompt_tokens: int
    error: str | None = None


class Ticket:
    """One request's rows, seen from the asyncio side: iterate `events()`; `cancel()` from anywhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: int):
        self.loop = loop
        self.rows = rows
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False  # read by the scheduler thread at each step boundary
        self.submitted_at = time.perf_counter()

    def cancel(self) -> None:
        self.cancelled = True

    async def events(self):
        """Every row's events until each row is done."""
        left = self.rows
        while left:
            event = await self.queue.get()
            if isinstance(event, DoneEvent):
                left -= 1
            yield event


def _deliver(items: list[tuple[Ticket, TokenEvent | DoneEvent]]) -> None:
    """On the event loop: one step's events, handed over in one call."""
    for ticket, event in items:
        ticket.queue.put_nowait(event)


class _Row:
    def __init__(
        self, ticket: Ticket, index: int, prompt: list[int], params: RowParams, tokenizer: Tokenizer
    ):
        self.ticket = ticket
        self.index = index
        self.prompt = prompt
        self.params = params
        self.text = TextAssembler(tokenizer, params.stop)
        self.sampling: RowSampling | None = None  # set when the row takes a slot
        self.slot = -1
        self.fed = 0  # prompt tokens in the cache
        self.next_token: int | None = None  # sampled, not yet fed
        self.generated = 0
        self.finish_reason: str | None = None
        self.error: str | None = None


class Metrics:
    """Counters the scheduler keeps for /metrics; plain ints read without a lock (a scrape may be a step stale)."""

    def __init__(self):
        self.steps = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.rows_finished: collections.Counter[str] = collections.Counter()
        self.rejected = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def generated(self, n: int) -> None:
        self.generated_tokens += n
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n))
            while self._recent and now - self._recent[0][0] > 10.0:
                self._recent.popleft()

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self._lock:
            return sum(n for t, n in self._recent if now - t <= window) / window


class Scheduler:
    """The thread that owns `model`. `submit` from the asyncio side; `start()` once, `stop()` at shutdown."""

    def __init__(
        self,
        model: GPT2,
        tokenizer: Tokenizer,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ):
        if max_batch < 1 or max_queue < 1 or prefill_chunk < 1:
            raise ValueError("max_batch, max_queue and prefill_chunk must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.context_length = model.config.context_length
        # The model's argmax may stand for sampling only where every row it could pick is a token (`sample_rows`
        # masks a vocabulary padded past the tokenizer's).
        self._greedy_head = model.config.vocab_size <= tokenizer.n_vocab
        self.metrics = Metrics()
        self.cache: KVCache | None = (
            None  # allocated by the thread, so a server starts before the memory is zeroed
        )
        self.slots: list[_Row | None] = [None] * max_batch
        self.n_dec = 0
        self.n_active = 0
        self.waiting: collections.deque[_Row] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Ticket, TokenEvent | DoneEvent]]] = {}

    # -- the asyncio side ------------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def running(self) -> int:
        return self.n_active

    def submit(
        self,
        prompts: Sequence[Sequence[int]],
        params: Sequence[RowParams],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Ticket:
        """Queue one row per prompt (their `index` is their place here); all or none. Raises `QueueFull` or
        `SchedulerClosed`. Prompts must fit the window with their `max_tokens` (the HTTP side checks and says so)."""
        ticket = Ticket(loop or asyncio.get_running_loop(), len(prompts))
        rows = [
            _Row(ticket, i, list(p), q, self.tokenizer)
            for i, (p, q) in enumerate(zip(prompts, params, strict=True))
        ]
        for row in rows:
            if not row.prompt or len(row.prompt) + row.params.max_tokens > self.context_length:
                raise ValueError(
                    f"a prompt of {len(row.prompt)} tokens with max_tokens {row.params.max_tokens} "
                    f"does not fit the {self.context_length}-token window"
                )
        with self._cond:
            if self._closing:
                raise SchedulerClosed("the server is shutting down")
            if len(self.waiting) + len(rows) > self.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(len(self.waiting), self.max_queue)
            self.waiting.extend(rows)
            self._cond.notify()
        return ticket

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpt2tui-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Take no more requests, end every row (cancelled) and let the thread go."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        self.cache = KVCache.for_model(self.model, self.max_batch)
        # On the CPU, torch's threads follow the cores other processes leave free.
        governor = governor_for(self.model.device)
        try:
            while True:
                with self._cond:
                    while not self._closing and not self.waiting and self.n_active == 0:
                        self._cond.wait()
                    if self._closing:
                        break
                    self._admit()
                governor.tick()
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 - a failed forward ends its rows, not the server
                    self._fail_all(f"{type(e).__name__}: {e}")
                self._flush()
        finally:
            governor.close()
            self._fail_all(None)
            self._flush()

    def _emit(self, row: _Row, event: TokenEvent | DoneEvent) -> None:
        self._outbox.setdefault(row.ticket.loop, []).append((row.ticket, event))

    def _flush(self) -> None:
        """Hand the step's events to each event loop in one call: one wake-up per step, not one per token."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                for ticket, _ in items:
                    ticket.cancel()

    def _admit(self) -> None:
        while self.waiting and self.n_active < self.max_batch:
            row = self.waiting.popleft()
            if row.ticket.cancelled or row.params.max_tokens == 0:
                row.finish_reason = "cancelled" if row.ticket.cancelled else "length"
                self._done(row)
                continue
            row.slot = self.n_active
            self.slots[row.slot] = row
            self.cache.clear_row(row.slot)
            row.sampling = RowSampling.start(row.params, self.model.device, self.model.config.vocab_size)
            self.n_active += 1

    @torch.inference_mode()
    def _step(self) -> None:
        self._leave()
        self._prefill()
        self._leave()
        self._decode()
        self._leave()
        self.metrics.steps += 1

    def _prefill(self) -> None:
        start = self.n_dec
        group: list[_Row] = []
        n_max = 0
        for s in range(start, self.n_active):
            row = self.slots[s]
            n = min(len(row.prompt) - row.fed, self.prefill_chunk)
            wider = max(n_max, n)
            fits = all(r.fed + wider <= self.cache.max_len for r in (*group, row))
            if group and (not fits or (len(group) + 1) * wider > self.prefill_chunk):
                break
            group.append(row)
            n_max = wider
        if not group:
            return
        pad = self.tokenizer.eot_token
        chunks = [row.prompt[row.fed : row.fed + n_max] for row in group]
        ids = torch.tensor([c + [pad] * (n_max - len(c)) for c in chunks], device=self.model.device)  # (g, n)
        view = self.cache.rows(start, start + len(group))
        h = self.model.hidden(ids, view)  # (g, n, C)
        # Padding wrote past each short row's end; its true length makes the next forward overwrite that.
        view.set_lengths([row.fed + len(c) for row, c in zip(group, chunks, strict=True)])
        ready = []
        for b, (row, c) in enumerate(zip(group, chunks, strict=True)):
            row.fed += len(c)
            self.metrics.prompt_tokens += len(c)
            if row.fed == len(row.prompt):
                ready.append((row, h[b, len(c) - 1]))
        if not ready:
            return
        rows = [row for row, _ in ready]
        self._accept(rows, self._sample(torch.stack([x for _, x in ready]), rows))
        for row in rows:
            self._swap(row.slot, self.n_dec)  # into the decoding region
            self.n_dec += 1

    def _decode(self) -> None:
        rows = self.slots[: self.n_dec]
        if not rows:
            return
        ids = torch.tensor([[row.next_token] for row in rows], device=self.model.device)  # (b, 1)
        view = self.cache.rows(0, self.n_dec)
        self._accept(rows, self._sample(self.model.hidden(ids, view)[:, -1], rows))

    def _sample(self, h: torch.Tensor, rows: list[_Row]) -> list[Sampled]:
        """Each row's next token from its last hidden state `(b, C)`."""
        samplings = [row.sampling for row in rows]
        if self._greedy_head and all(s.plain_greedy for s in samplings):
            # Only the argmax is wanted: a packed head finds it without writing b × 50257 logits.
            return [Sampled(t) for t in self.model.greedy(h).tolist()]
        return sample_rows(self.model.head(h), samplings, self.tokenizer.n_vocab)  # (b, V) logits

    def _accept(self, rows: list[_Row], sampled: list[Sampled]) -> None:
        accepted = 0
        for row, s in zip(rows, sampled, strict=True):
            t = s.token
            if row.params.stop_at_eos and t == self.tokenizer.eot_token:
                row.finish_reason = "eos"
                continue
            accepted += 1
            row.generated += 1
            row.next_token = t
            text = row.text.push(t)
            if row.text.stopped:
                row.finish_reason = "stop"
            elif row.generated >= row.params.max_tokens or self.cache.lens[row.slot] + 1 > self.cache.max_len:
                row.finish_reason = "length"
            self._emit(row, TokenEvent(row.index, t, text, s))
        self.metrics.generated(accepted)

    def _leave(self) -> None:
        """Rows that finished or were cancelled give their slot up; the packing moves a later row into it."""
        for row in list(self.slots[: self.n_active]):
            if row.finish_reason is None and row.ticket.cancelled:
                row.finish_reason = "cancelled"
            if row.finish_reason is not None:
                self._remove(row)
                self._done(row)

    def _remove(self, row: _Row) -> None:
        s = row.slot
        self.slots[s] = None
        if s < self.n_dec:
            last_dec = self.n_dec - 1
            self._move(last_dec, s)
            self.n_dec -= 1
            if self.n_active - 1 > last_dec:
                self._move(
                    self.n_active - 1, last_dec
                )  # the last prefilling row fills the decoding region's gap
        else:
            self._move(self.n_active - 1, s)
        self.n_active -= 1
        row.slot = -1

    def _move(self, src: int, dst: int) -> None:
        if src != dst:
            self.cache.move_row(src, dst)
            self.slots[dst], self.slots[src] = self.slots[src], None
            self.slots[dst].slot = dst

    def _swap(self, a: int, b: int) -> None:
        if a != b:
            self.cache.swap_rows(a, b)
            self.slots[a], self.slots[b] = self.slots[b], self.slots[a]
            self.slots[a].slot, self.slots[b].slot = a, b

    def _done(self, row: _Row) -> None:
        tail = "" if row.finish_reason in ("stop", "cancelled", "error") else row.text.flush()
        self.metrics.rows_finished[row.finish_reason] += 1
        self._emit(
            row, DoneEvent(row.index, row.finish_reason, tail, row.generated, len(row.prompt), row.error)
        )

    def _fail_all(self, error: str | None) -> None:
        """End every row: with an error after a failed forward, cancelled at shutdown."""
        with self._cond:
            waiting = list(self.waiting) if error is None else []
            if error is None:
                self.waiting.clear()
        for row in [*self.slots[: self.n_active], *waiting]:
            row.finish_reason = "error" if error else "cancelled"
            row.error = error
            self._done(row)
        self.slots = [None] * self.max_batch
        self.n_dec = self.n_active = 0
