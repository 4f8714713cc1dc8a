"""Text generation: KV-cached decoding, sampling, and streaming text that never splits a UTF-8 character.

Layers, bottom up:

- `process_logits` / `sample_next`: logits → next ids, with the same processors and order as Hugging Face (repetition penalty,
  temperature, top-k, top-p; greedy when temperature is 0).
- `Decoder`: the token engine. A batch of prompts is right-padded and prefilled (optionally in chunks) into a static
  `KVCache`; the cache then keeps each row's true length, so rows continue from their own positions and nobody
  attends to padding. Finished rows are dropped from the batch, so the rest run faster. On CUDA its one-token steps
  replay from a CUDA graph (`decode_graph.py`; `cuda_graph=False` or $GPT2TUI_CUDA_GRAPH=0 turns that off).
- `SpeculativeDecoder` (speculative.py): the same protocol for one prompt, with a draft model or prompt lookup
  proposing tokens that the target checks several at a time; same tokens when greedy, same distribution when sampling.
- `generate_ids_nocache`: the plain loop (the whole sequence through the model for every token), the oracle the
  cached engine must match token for token.
- `Stream` / `stream` / `generate`: text. Stop strings are honoured across token boundaries: text that could be the
  start of a stop string is held back until it is known not to be one.

Prompts longer than the window are cut from the left with a `PromptTruncatedWarning`: enough is dropped that
`max_new_tokens` fit, but never more than half the window, so a long request shortens the reply rather than the prompt.
An empty prompt starts from `<|endoftext|>`, the token GPT-2 saw between documents.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .cache import KVCache
from .decode_graph import GraphedDecodeStep, graphs_requested
from .model import GPT2
from .speculative import Drafter, SpeculationStats, SpeculativeDecoder
from .threads import governor_for
from .tokenizer import StreamDecoder, Tokenizer


class PromptTruncatedWarning(UserWarning):
    """A prompt did not fit the context window and its oldest tokens were dropped."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.8  # 0 → greedy
    top_k: int | None = None  # keep the k most likely tokens (None or 0: all)
    top_p: float | None = None  # keep the smallest set whose probability reaches p (None or 1.0: all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the reply
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)  # strings that end the reply (not included in it)
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0, "max_new_tokens must be an integer >= 0"),
            (self.temperature >= 0, "temperature must be >= 0 (0 means greedy)"),
            (self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 0), "top_k must be an integer >= 0"),
            (self.top_p is None or 0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1.0 means off)"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self!r}")


# -- sampling ------------------------------------------------------------------------------------------------------


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Last-position logits `(B, V)` after the repetition penalty, temperature, top-k and top-p, in Hugging Face's
    order; filtered tokens are -inf. `seen` `(B, V)` marks tokens already in the prompt or the reply."""
    logits = logits.float()
    if seen is not None and params.repetition_penalty != 1.0:
        # CTRL's penalty, as Hugging Face applies it: shrink positive logits, push negative ones further down.
        penalised = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if params.temperature == 0:
        return logits
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the most likely always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids `(B,)` from last-position logits `(B, V)`: the argmax when temperature is 0, else a draw."""
    logits = process_logits(logits, params, seen)
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


def fit_prompt(ids: Sequence[int], context_length: int, max_new_tokens: int, bos: int) -> tuple[list[int], int]:
    """A prompt cut to the window (see the module docstring); returns the ids kept and how many were dropped."""
    ids = list(ids) or [bos]
    budget = max(context_length - max_new_tokens, context_length // 2, 1)
    if len(ids) <= budget:
        return ids, 0
    return ids[-budget:], len(ids) - budget


# -- the cached engine ---------------------------------------------------------------------------------------------


class Decoder:
    """Generates tokens for a batch of prompts with a static KV cache; iterate it for `{row: token}` per step.

    A row ends on `<|endoftext|>` (when `params.stop_at_eos`), after `max_new_tokens`, when the context window is full,
    or when the consumer calls `finish(row)` (a stop string, a cancelled request). `finish_reason[row]` says which.
    """

    def __init__(
        self,
        model: GPT2,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        eos_id: int | None = None,
        n_vocab: int | None = None,
        prefill_chunk: int | None = None,
        cuda_graph: bool | None = None,
    ):
        if not prompts:
            raise ValueError("no prompts to generate from")
        self.model = model
        self.params = params
        self.eos_id = eos_id
        self.n_vocab = n_vocab
        self.prefill_chunk = prefill_chunk
        self.cuda_graph = graphs_requested(model.device, cuda_graph)
        ctx = model.config.context_length
        bos = eos_id if eos_id is not None else 0
        fitted = [fit_prompt(p, ctx, params.max_new_tokens, bos) for p in prompts]
        self.prompts = [ids for ids, _ in fitted]
        self.dropped = [n for _, n in fitted]
        for ids in self.prompts:
            bad = next((t for t in ids if not 0 <= t < model.config.vocab_size), None)
            if bad is not None:
                raise ValueError(f"prompt token id {bad} is out of range for a vocabulary of {model.config.vocab_size}")
        self.finish_reason: list[str | None] = [None] * len(prompts)
        self.n_generated = [0] * len(prompts)

    def finish(self, row: int, reason: str = "stop") -> None:
        if self.finish_reason[row] is None:
            self.finish_reason[row] = reason

    def process(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `(B, V)` as this decoder samples from them: padded vocabulary rows masked, then `process_logits`.
        The speculative decoder samples through this, so that it needs nothing from this module."""
        return process_logits(self._mask_padding(logits, copy=True), self.params, seen)

    def _mask_padding(self, logits: torch.Tensor, copy: bool = False) -> torch.Tensor:
        """Padded vocabulary rows, which the tokenizer cannot decode, at -inf (in place unless `copy`)."""
        if self.n_vocab is not None and logits.shape[-1] > self.n_vocab:
            logits = logits.clone() if copy else logits
            logits[:, self.n_vocab :] = float("-inf")
        return logits

    @torch.inference_mode()
    def __iter__(self) -> Iterator[dict[int, int]]:
        model, params = self.model, self.params
        device, ctx = model.device, model.config.context_length
        rows = list(range(len(self.prompts)))  # batch position → original row, shrinking as rows finish
        if params.max_new_tokens == 0:
            for r in rows:
                self.finish(r, "max_tokens")
            return
        lens = [len(p) for p in self.prompts]
        cache = KVCache.for_model(model, len(rows), max_len=min(ctx, max(lens) + params.max_new_tokens))
        governor = governor_for(device)  # on the CPU, threads follow the cores other processes leave free
        try:
            yield from self._steps(cache, lens, rows, governor)
        finally:
            governor.close()

    def _steps(self, cache: KVCache, lens: list[int], rows: list[int], governor) -> Iterator[dict[int, int]]:
        params, device = self.params, self.model.device
        logits = self._prefill(cache, lens)  # (B, V)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(logits.shape, dtype=torch.bool, device=device)  # (B, V)
            for b, p in enumerate(self.prompts):
                seen[b, torch.tensor(p, device=device)] = True
        generator = _generator(params, device)
        decode = self._decode_step(cache)
        while rows:
            governor.tick()
            next_ids = sample_next(self._mask_padding(logits), params, seen, generator)  # (B,)
            step: dict[int, int] = {}
            for b, (r, t) in enumerate(zip(rows, next_ids.tolist(), strict=True)):
                if params.stop_at_eos and t == self.eos_id:
                    self.finish(r, "eos")
                    continue
                step[r] = t
                self.n_generated[r] += 1
                if self.n_generated[r] >= params.max_new_tokens:
                    self.finish(r, "max_tokens")
                elif cache.lens[b] + 1 > cache.max_len:
                    self.finish(r, "context_full")
            if step:
                yield step  # the consumer may call finish() here
            keep = [b for b, r in enumerate(rows) if self.finish_reason[r] is None]
            if not keep:
                return
            if len(keep) < len(rows):
                cache.select_rows(keep)
                next_ids = next_ids[keep]
                seen = seen[keep] if seen is not None else None
                rows = [rows[b] for b in keep]
                decode = self._decode_step(cache)  # a graph holds the old cache's addresses
            if seen is not None:
                seen.scatter_(1, next_ids[:, None], True)
            logits = decode(next_ids)  # (B, V)

    def _decode_step(self, cache: KVCache):
        """One token per row → logits `(B, V)`: eager, or replayed from a CUDA graph (`decode_graph.py`)."""
        if self.cuda_graph:
            return GraphedDecodeStep(self.model, cache)
        model = self.model
        return lambda next_ids: model.head(model.hidden(next_ids[:, None], cache)[:, -1])  # (B, V)

    def _prefill(self, cache: KVCache, lens: list[int]) -> torch.Tensor:
        """Run the right-padded prompts through the model in chunks; logits `(B, V)` at each row's last token."""
        model, device = self.model, self.model.device
        T = max(lens)
        pad = self.eos_id if self.eos_id is not None else 0
        ids = torch.tensor([p + [pad] * (T - len(p)) for p in self.prompts], device=device)  # (B, T)
        chunk = self.prefill_chunk or T
        last = torch.empty(len(lens), model.config.emb_dim, device=device, dtype=model.dtype)  # (B, C)
        for s in range(0, T, chunk):
            h = model.hidden(ids[:, s : s + chunk], cache)  # (B, n, C)
            for b, n in enumerate(lens):
                if s <= n - 1 < s + chunk:
                    last[b] = h[b, n - 1 - s]
        cache.set_lengths(lens)  # padding positions past each row's length are overwritten as it decodes
        return model.head(last)  # (B, V)


@torch.inference_mode()
def generate_ids_nocache(
    model: GPT2, prompt: Sequence[int], params: SamplingParams, eos_id: int | None = None
) -> list[int]:
    """The no-cache loop: feed the whole sequence (cropped to the window) for every new token. Slow; the oracle."""
    ctx = model.config.context_length
    ids, _ = fit_prompt(prompt, ctx, params.max_new_tokens, eos_id if eos_id is not None else 0)
    ids = torch.tensor([ids], device=model.device)  # (1, T)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool, device=model.device)
        seen[0, ids[0]] = True
    generator = _generator(params, model.device)
    out: list[int] = []
    for _ in range(params.max_new_tokens):
        if ids.shape[1] > ctx:
            break
        logits = model(ids)[:, -1]  # (1, V)
        t = sample_next(logits, params, seen, generator)  # (1,)
        if params.stop_at_eos and t.item() == eos_id:
            break
        out.append(t.item())
        if seen is not None:
            seen[0, t] = True
        ids = torch.cat([ids, t[:, None]], dim=1)  # (1, T + 1)
    return out


# -- text ----------------------------------------------------------------------------------------------------------


class TextAssembler:
    """One row's ids → text deltas: UTF-8 held back until whole, stop strings held back until ruled out."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]):
        self.decoder: StreamDecoder = tokenizer.stream_decoder()
        self.stop = tuple(stop)
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        return self._emit(self.pending + self.decoder.push([token]))

    def flush(self) -> str:
        text, self.pending = self.pending + self.decoder.flush(), ""
        return self._emit(text, final=True)

    def _emit(self, text: str, final: bool = False) -> str:
        if not self.stop:
            self.pending = ""
            return text
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self.pending = ""
            return text[: min(hits)]
        hold = 0 if final else max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]


def _encode_prompt(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        # A prompt may name the document separator on purpose; it is the caller's text, not untrusted input.
        return tokenizer.encode(prompt, allowed_special="all")
    return list(prompt)


def _warn_dropped(dropped: int, kept: int, context_length: int) -> None:
    if dropped:
        warnings.warn(
            f"prompt was {dropped + kept} tokens; kept the last {kept} to fit the {context_length}-token context window",
            PromptTruncatedWarning,
            stacklevel=4,
        )


def _decoder(model: GPT2, tokenizer: Tokenizer, prompts: list[list[int]], params: SamplingParams,
             prefill_chunk: int | None, draft: GPT2 | str | Drafter | None, draft_tokens: int | None):
    if draft is None and draft_tokens is not None:
        raise ValueError("draft_tokens needs a draft: a draft model or 'prompt-lookup'")
    decoder = Decoder(model, prompts, params, tokenizer.eot_token, tokenizer.n_vocab, prefill_chunk)
    return decoder if draft is None else SpeculativeDecoder(decoder, draft, draft_tokens)


class Stream:
    """Iterate for text deltas of one prompt's continuation. Afterwards: `text`, `token_ids`, `finish_reason`
    (`eos`, `stop`, `max_tokens`, `context_full`, or `cancelled` if the consumer stopped early), `prompt_tokens`.

    `cancel()` may be called from any thread: the check runs after every sampled token (also those whose text is
    held back, half a UTF-8 character or a possible stop string), so no further forward pass starts once it is set.
    The text generated so far is kept and flushed. `first_token_at` is the `time.perf_counter()` of the first
    sampled token (prefill done), for time-to-first-token.

    With a `draft` (a draft `GPT2` of the same vocabulary, "prompt-lookup", or a `Drafter`) the tokens come from a
    `SpeculativeDecoder` checking `draft_tokens` drafts per target forward: the same tokens when greedy, the same
    distribution when sampling. `speculation` then holds its `SpeculationStats` (None without a draft)."""

    def __init__(self, model: GPT2, tokenizer: Tokenizer, prompt: str | Sequence[int], params: SamplingParams,
                 prefill_chunk: int | None = None, cancel: threading.Event | None = None,
                 draft: GPT2 | str | Drafter | None = None, draft_tokens: int | None = None):
        self.params = params
        self._cancel = cancel if cancel is not None else threading.Event()
        self.first_token_at: float | None = None
        self._decoder = _decoder(model, tokenizer, [_encode_prompt(tokenizer, prompt)], params, prefill_chunk, draft,
                                 draft_tokens)
        speculative = isinstance(self._decoder, SpeculativeDecoder)
        self.speculation: SpeculationStats | None = self._decoder.stats if speculative else None
        self.prompt_tokens = len(self._decoder.prompts[0])
        self.dropped_tokens = self._decoder.dropped[0]
        _warn_dropped(self.dropped_tokens, self.prompt_tokens, model.config.context_length)
        self._text = TextAssembler(tokenizer, params.stop)
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[str]:
        try:
            if self._cancel.is_set():
                self._decoder.finish(0, "cancelled")
                return
            for step in self._decoder:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self.token_ids.append(step[0])
                delta = self._text.push(step[0])
                if self._text.stopped:
                    self._decoder.finish(0, "stop")
                elif self._cancel.is_set():
                    self._decoder.finish(0, "cancelled")  # the decoder ends before its next forward pass
                if delta:
                    self.text += delta
                    yield delta
                    if self._cancel.is_set():  # set while the consumer held the delta: still before the next forward
                        self._decoder.finish(0, "cancelled")
            if not self._text.stopped:
                tail = self._text.flush()
                if tail:
                    self.text += tail
                    yield tail
            self.finish_reason = self._decoder.finish_reason[0]
        finally:
            if self.finish_reason is None:
                self.finish_reason = "cancelled"


def stream(model: GPT2, tokenizer: Tokenizer, prompt: str | Sequence[int], **params) -> Stream:
    """Stream the continuation of `prompt` (text or token ids) as text deltas.

        for delta in stream(model, tokenizer, "Hello", max_new_tokens=50, temperature=0.8, top_k=40):
            print(delta, end="", flush=True)

    Keyword arguments are `SamplingParams` fields, plus `prefill_chunk` (tokens per prefill forward), `cancel` (a
    `threading.Event`; setting it from another thread stops generation after the current token), and `draft` /
    `draft_tokens` for speculative decoding (see `Stream`). Stop early by leaving the loop, or with
    `Stream.cancel()`: no further token is computed.
    """
    extra = {name: params.pop(name, None) for name in ("prefill_chunk", "cancel", "draft", "draft_tokens")}
    return Stream(model, tokenizer, prompt, SamplingParams(**params), **extra)


def generate(model: GPT2, tokenizer: Tokenizer, prompt: str | Sequence[str], **params) -> str | list[str]:
    """The continuation of one prompt, or of a batch of prompts of any lengths decoded together (speculative decoding,
    with `draft=`, takes one prompt at a time)."""
    if isinstance(prompt, str):
        return "".join(stream(model, tokenizer, prompt, **params))
    chunk, draft, k = (params.pop(name, None) for name in ("prefill_chunk", "draft", "draft_tokens"))
    sp = SamplingParams(**params)
    decoder = _decoder(model, tokenizer, [_encode_prompt(tokenizer, p) for p in prompt], sp, chunk, draft, k)
    for dropped, kept in zip(decoder.dropped, decoder.prompts, strict=True):
        _warn_dropped(dropped, len(kept), model.config.context_length)
    texts = [TextAssembler(tokenizer, sp.stop) for _ in prompt]
    out = [""] * len(prompt)
    for step in decoder:
        for row, token in step.items():
            out[row] += texts[row].push(token)
            if texts[row].stopped:
                decoder.finish(row, "stop")
    for row, t in enumerate(texts):
        if not t.stopped:
            out[row] += t.flush()
    return out
