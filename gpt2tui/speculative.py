"""Speculative decoding: a cheap drafter proposes k tokens, the target model checks them all in one forward.

Why it is faster: at batch 1 a decode step is bound by reading the weights, so a forward of k+1 tokens through the KV
cache costs about what a forward of one does. Each target pass yields the drafts it accepts plus one token of its own:
between 1 and k+1 tokens per pass.

Why it changes nothing: the target checks every draft.
- Greedy (temperature 0): drafts are kept while they equal the target's argmax, then the target's own next token
  follows: exactly the tokens `Decoder` gives.
- Sampling: a draft x, drawn with probability q(x), is kept with probability min(1, p(x)/q(x)); at the first rejection
  the token is drawn from normalize(max(0, p - q)) instead, and when all are kept, one more from p (Leviathan et al.
  2023; Chen et al. 2023). Every token then has exactly the target's distribution p. p and q are taken after
  `process_logits` (repetition penalty, temperature, top-k, top-p), each with the tokens accepted before it.

Drafters (anything with `default_k`, `start` and `propose`):
- `DraftModel`: a smaller GPT-2 with the same vocabulary (gpt2 drafting for gpt2-xl), with its own KV cache.
- `PromptLookup`: no model: what followed the latest earlier occurrence of the last n tokens (n = 3, 2, 1), as
  transformers' `prompt_lookup_num_tokens`. Strong when the reply copies its input (summaries, code edits). Its q is
  one-hot, so a draft is kept with probability p(x).

After each pass both caches roll back to the accepted length (`KVCache.set_lengths`); the next forward overwrites the
rejected positions. The target's cache always holds every token but the last, which goes in with the next drafts.

`SpeculativeDecoder` wraps a plain `Decoder`, which fits and checks the prompt, keeps the finish reasons and counts, and
processes logits (`Decoder.process`): generate.py imports this module, so this module imports nothing from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from .cache import KVCache
from .errors import ConfigError
from .model import GPT2
from .threads import governor_for

if TYPE_CHECKING:
    from .generate import Decoder, SamplingParams


@dataclass
class SpeculationStats:
    drafted: int = 0  # draft tokens the target checked
    accepted: int = 0  # of those, the ones it kept
    target_passes: int = 0  # the target's verifying forwards (the prompt's prefill not counted)
    tokens: int = 0  # tokens generated

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def __str__(self) -> str:
        return (f"{self.accepted} of {self.drafted} drafted tokens accepted ({self.acceptance_rate:.0%}), "
                f"{self.target_passes} target passes for {self.tokens} tokens")


# -- the acceptance rule -------------------------------------------------------------------------------------------


def acceptance(p_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    """min(1, p(x)/q(x)): the chance of keeping a draft x that the drafter drew with probability q(x) > 0."""
    return (p_x / q_x).clamp(max=1.0)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(0, p - q)) `(V,)`: after a rejection, the mass p has where the drafter under-proposed."""
    r = (p - q).clamp(min=0.0)  # (V,)
    total = r.sum()
    # p == q leaves nothing, but then nothing is ever rejected either (up to rounding): p is the right fallback.
    return r / total if total > 0 else p


def verify(scores: torch.Tensor, drafts: list[int], q: torch.Tensor | None, sampling: Sampling) -> tuple[int, int]:
    """How many `drafts` the target keeps, and the token that follows them. `scores` `(n+1, V)`: the target's processed
    logits after the last accepted token and after each draft; `q` `(n, V)`: the draft's distributions (None: one-hot
    at each draft)."""
    n = len(drafts)
    if sampling.greedy:
        target = scores.argmax(dim=-1).tolist()  # (n+1,)
        a = 0
        while a < n and drafts[a] == target[a]:
            a += 1
        return a, target[a]
    p = torch.softmax(scores, dim=-1)  # (n+1, V)
    if n:
        x = torch.tensor(drafts, device=p.device)  # (n,)
        rows = torch.arange(n, device=p.device)  # (n,)
        q_x = q[rows, x] if q is not None else torch.ones(n, device=p.device)  # (n,)
        u = torch.rand(n, generator=sampling.generator, device=p.device)  # (n,)
        kept = (u < acceptance(p[rows, x], q_x)).tolist()
        a = kept.index(False) if False in kept else n
    else:
        a = 0
    if a == n:
        return n, sampling.draw(p[n])
    q_a = q[a] if q is not None else F.one_hot(torch.tensor(drafts[a]), p.shape[-1]).to(p)  # (V,)
    return a, sampling.draw(residual(p[a], q_a))


# -- sampling as the target does it, shared with the drafters --------------------------------------------------------


class Sampling:
    """The target's sampling setup, which a drafter uses too, so that its q is processed as the target's p is."""

    def __init__(self, decoder: Decoder):
        self.params: SamplingParams = decoder.params
        self.process = decoder.process  # (n, V) logits, (n, V) seen → (n, V) processed
        self.greedy = self.params.temperature == 0
        self.eos = decoder.eos_id if self.params.stop_at_eos else None
        self.device = decoder.model.device
        self.vocab_size = decoder.model.config.vocab_size
        seed = self.params.seed
        self.generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)

    def seen(self, tokens: Sequence[int]) -> torch.Tensor | None:
        """`(1, V)` marks of the tokens so far, for the repetition penalty (None when it is off)."""
        if self.params.repetition_penalty == 1.0:
            return None
        seen = torch.zeros(1, self.vocab_size, dtype=torch.bool, device=self.device)  # (1, V)
        seen[0, torch.tensor(list(tokens), device=self.device)] = True
        return seen

    def seen_along(self, seen: torch.Tensor | None, drafts: list[int]) -> torch.Tensor | None:
        """`(n+1, V)`: row j marks the tokens so far plus the first j drafts, the context of the target's j-th row."""
        if seen is None:
            return None
        rows = seen.repeat(len(drafts) + 1, 1)  # (n+1, V)
        for j, d in enumerate(drafts):
            rows[j + 1 :, d] = True
        return rows

    def draw(self, probs: torch.Tensor) -> int:
        return torch.multinomial(probs, 1, generator=self.generator).item()

    def pick(self, logits: torch.Tensor, seen: torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
        """A draft token from one row of logits `(1, V)`, and its distribution q `(1, V)` (None when greedy)."""
        scores = self.process(logits, seen)  # (1, V)
        if self.greedy:
            return scores.argmax(dim=-1).item(), None
        q = torch.softmax(scores, dim=-1)  # (1, V)
        return self.draw(q[0]), q


def _feed(model: GPT2, cache: KVCache, ids: Sequence[int], chunk: int | None = None) -> torch.Tensor | None:
    """Run `ids` through the model into `cache` (in chunks, as a prefill); hidden states `(1, n, C)` of the last chunk."""
    x = torch.tensor([list(ids)], device=model.device)  # (1, T)
    h = None
    step = chunk or max(len(ids), 1)
    for s in range(0, len(ids), step):
        h = model.hidden(x[:, s : s + step], cache)  # (1, n, C)
    return h


# -- drafters --------------------------------------------------------------------------------------------------------


class Drafter(Protocol):
    default_k: int

    def start(self, target: GPT2, max_len: int) -> None:
        """A new generation, whose target cache has `max_len` positions."""

    def propose(self, tokens: list[int], k: int, sampling: Sampling) -> tuple[list[int], torch.Tensor | None]:
        """Up to `k` tokens to follow `tokens`, and their distributions q `(n, V)` (None: one-hot, or greedy)."""


class DraftModel:
    """A smaller GPT-2 of the same vocabulary proposes tokens as the target would pick them, from its own KV cache."""

    default_k = 4

    def __init__(self, model: GPT2, prefill_chunk: int | None = None):
        self.model = model
        self.prefill_chunk = prefill_chunk
        self.cache: KVCache | None = None
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds

    def check(self, target: GPT2) -> None:
        mine, theirs = self.model.config.vocab_size, target.config.vocab_size
        if mine != theirs:
            raise ConfigError(f"the draft model's vocabulary has {mine} tokens and the target's {theirs}; a draft "
                              "model must share the target's vocabulary")
        if self.model.device != target.device:
            raise ValueError(f"the draft model is on {self.model.device} and the target on {target.device}; put "
                             "both on one device")

    def start(self, target: GPT2, max_len: int) -> None:
        self.check(target)
        self.cache = KVCache.for_model(self.model, 1, max_len)  # capped at the draft's own window
        self.cached = []

    def propose(self, tokens: list[int], k: int, sampling: Sampling) -> tuple[list[int], torch.Tensor | None]:
        k = min(k, self.cache.max_len - len(tokens) + 1)  # every draft but the last goes through the cache
        if k <= 0:
            return [], None
        # Keep what the cache shares with `tokens` (rejected drafts go), but feed at least the last token: its logits.
        keep = next((i for i, (a, b) in enumerate(zip(self.cached, tokens[:-1], strict=False)) if a != b),
                    min(len(self.cached), len(tokens) - 1))
        self.cache.set_lengths([keep])
        h = _feed(self.model, self.cache, tokens[keep:], self.prefill_chunk)  # (1, n, C)
        logits = self.model.head(h[:, -1])  # (1, V)
        seen = sampling.seen(tokens)  # (1, V) or None
        drafts, qs = [], []
        while True:
            t, q = sampling.pick(logits, seen)
            drafts.append(t)
            qs.append(q)
            if len(drafts) == k or t == sampling.eos:
                break
            if seen is not None:
                seen[0, t] = True
            h = self.model.hidden(torch.tensor([[t]], device=self.model.device), self.cache)  # (1, 1, C)
            logits = self.model.head(h[:, -1])  # (1, V)
        self.cached = tokens + drafts[:-1]  # the last draft was never fed
        return drafts, None if sampling.greedy else torch.cat(qs)  # (n, V)


def lookup(tokens: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the last n tokens, n from `max_ngram` down to 1
    (a longer match is better evidence); [] when nothing matches."""
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        tail, last = list(tokens[-n:]), tokens[-1]
        for i in range(len(tokens) - n - 1, -1, -1):  # latest first, the tail itself excluded
            if tokens[i + n - 1] == last and list(tokens[i : i + n]) == tail:
                return list(tokens[i + n : i + n + k])
    return []


class PromptLookup:
    """Drafts by copying from the prompt and the reply so far (n-gram matching); no second model."""

    default_k = 8

    def __init__(self, max_ngram: int = 3):
        if max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1; got {max_ngram}")
        self.max_ngram = max_ngram

    def start(self, target: GPT2, max_len: int) -> None:
        pass

    def propose(self, tokens: list[int], k: int, sampling: Sampling) -> tuple[list[int], torch.Tensor | None]:
        return lookup(tokens, k, self.max_ngram), None


def as_drafter(draft: GPT2 | str | Drafter, prefill_chunk: int | None = None) -> Drafter:
    """A drafter from a draft model, "prompt-lookup", or a drafter object."""
    if isinstance(draft, GPT2):
        return DraftModel(draft, prefill_chunk)
    if isinstance(draft, str):
        if draft != "prompt-lookup":
            raise ValueError(f"unknown drafter {draft!r}: give a GPT2 draft model or 'prompt-lookup'")
        return PromptLookup()
    if not all(hasattr(draft, name) for name in ("default_k", "start", "propose")):
        raise TypeError(f"a drafter needs default_k, start() and propose(); got {type(draft).__name__}")
    return draft


# -- the engine ------------------------------------------------------------------------------------------------------


class SpeculativeDecoder:
    """`Decoder`'s protocol (iterate for `{0: token}`, one dict per token; `finish`, `finish_reason`, `n_generated`,
    `prompts`, `dropped`) for one prompt, with each target forward checking up to `k` drafts. `stats` counts them.

    `decoder` is the plain decoder of the same request: its prompt, finish reasons and counts are this one's (it is
    not iterated itself). `draft`: a `GPT2` of the same vocabulary, "prompt-lookup", or a `Drafter`.
    """

    def __init__(self, decoder: Decoder, draft: GPT2 | str | Drafter, k: int | None = None):
        if len(decoder.prompts) != 1:
            raise ValueError(f"speculative decoding takes one prompt at a time; got {len(decoder.prompts)}")
        self.decoder = decoder
        self.drafter = as_drafter(draft, decoder.prefill_chunk)
        if isinstance(self.drafter, DraftModel):
            self.drafter.check(decoder.model)  # before any output, not at the first token
        self.k = self.drafter.default_k if k is None else k
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"the number of draft tokens must be an integer >= 1; got {self.k!r}")
        self.stats = SpeculationStats()

    @property
    def prompts(self) -> list[list[int]]:
        return self.decoder.prompts

    @property
    def dropped(self) -> list[int]:
        return self.decoder.dropped

    @property
    def finish_reason(self) -> list[str | None]:
        return self.decoder.finish_reason

    @property
    def n_generated(self) -> list[int]:
        return self.decoder.n_generated

    def finish(self, row: int, reason: str = "stop") -> None:
        self.decoder.finish(row, reason)

    @torch.inference_mode()
    def __iter__(self) -> Iterator[dict[int, int]]:
        if self.decoder.params.max_new_tokens == 0:
            self.finish(0, "max_tokens")
            return
        governor = governor_for(self.decoder.model.device)  # on the CPU, threads follow the free cores (threads.py)
        try:
            yield from self._passes(governor)
        finally:
            governor.close()

    def _passes(self, governor) -> Iterator[dict[int, int]]:
        model, params = self.decoder.model, self.decoder.params
        tokens = list(self.prompts[0])
        max_len = min(model.config.context_length, len(tokens) + params.max_new_tokens)  # as Decoder's cache
        cache = KVCache.for_model(model, 1, max_len)
        sampling = Sampling(self.decoder)
        self.drafter.start(model, cache.max_len)
        _feed(model, cache, tokens[:-1], self.decoder.prefill_chunk)  # the last token goes in with the first drafts
        seen = sampling.seen(tokens)  # (1, V) or None
        while True:
            governor.tick()
            drafts, q = self._draft(tokens, cache.max_len, sampling)
            ids = torch.tensor([tokens[-1:] + drafts], device=model.device)  # (1, n+1)
            logits = model.head(model.hidden(ids, cache)[0])  # (n+1, V)
            scores = sampling.process(logits, sampling.seen_along(seen, drafts))  # (n+1, V)
            a, t = verify(scores, drafts, q, sampling)
            cache.set_lengths([len(tokens) + a])  # the accepted drafts stay; `t` goes in with the next drafts
            self.stats.target_passes += 1
            self.stats.drafted += len(drafts)
            self.stats.accepted += a
            for token in drafts[:a] + [t]:
                step = self._emit(token, len(tokens), cache.max_len)
                if step is None:
                    return
                tokens.append(token)
                if seen is not None:
                    seen[0, token] = True
                yield step  # the consumer may call finish() here
                if self.finish_reason[0] is not None:
                    return

    def _draft(self, tokens: list[int], max_len: int, sampling: Sampling) -> tuple[list[int], torch.Tensor | None]:
        """The drafter's proposal, cut so that this pass never emits past max_new_tokens, the window or EOS."""
        left = self.decoder.params.max_new_tokens - self.n_generated[0]
        k = min(self.k, left - 1, max_len - len(tokens))  # the pass adds a token of its own; the last is cached
        if k <= 0:
            return [], None
        drafts, q = self.drafter.propose(tokens, k, sampling)
        drafts = drafts[:k]
        if sampling.eos in drafts:
            drafts = drafts[: drafts.index(sampling.eos) + 1]  # nothing follows EOS
        return drafts, None if q is None else q[: len(drafts)]

    def _emit(self, token: int, position: int, max_len: int) -> dict[int, int] | None:
        """`Decoder`'s bookkeeping for one sampled token at `position`: None for EOS, else the step to yield."""
        params = self.decoder.params
        if params.stop_at_eos and token == self.decoder.eos_id:
            self.finish(0, "eos")
            return None
        self.n_generated[0] += 1
        self.stats.tokens += 1
        if self.n_generated[0] >= params.max_new_tokens:
            self.finish(0, "max_tokens")
        elif position + 1 > max_len:
            self.finish(0, "context_full")
        return {0: token}
