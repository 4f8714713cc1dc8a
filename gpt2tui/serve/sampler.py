"""Sampling for a batch whose rows each have their own parameters, seed and penalties.

Every row is processed by `generate.process_logits`, the function the library and the chat app sample through, so a
request sees the same temperature and top-p whether it is served or generated locally. Rows that share their
parameters go through it together. A seeded row draws with its own `torch.Generator` from its own `(1, V)` row, as
`generate.sample_next` draws for a lone prompt: its seed means the same thing whichever rows share its batch.

Presence and frequency penalties follow OpenAI's definition, over the tokens the row has generated so far:
`logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty`, before the temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..generate import SamplingParams, process_logits


@dataclass(frozen=True)
class RowParams:
    """How one row (one choice of one request) is generated."""

    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: none; k: the sampled token's log-probability and the k most likely
    stop_at_eos: bool = True

    @property
    def penalised(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass
class RowSampling:
    """A row's sampling state across steps."""

    params: RowParams
    generator: torch.Generator | None = None
    counts: torch.Tensor | None = None  # (V,) times each token was generated, for the penalties
    _processing: SamplingParams | None = field(default=None, repr=False)

    @classmethod
    def start(cls, params: RowParams, device: torch.device, vocab: int) -> RowSampling:
        generator = None
        if params.seed is not None and params.temperature > 0:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        counts = torch.zeros(vocab, device=device) if params.penalised else None  # (V,)
        top_p = params.top_p if params.top_p < 1.0 else None
        processing = SamplingParams(max_new_tokens=1, temperature=params.temperature, top_p=top_p)
        return cls(params, generator, counts, processing)

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing else asked (no log-probabilities, no penalties): the argmax alone decides."""
        p = self.params
        return p.temperature == 0 and p.logprobs is None and not p.penalised

    def record(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1


@dataclass(frozen=True)
class Sampled:
    token: int
    logprob: float | None = None  # of the sampled token, under the model's own distribution
    top: list[tuple[int, float]] | None = None  # the most likely tokens and their log-probabilities


def sample_rows(logits: torch.Tensor, rows: Sequence[RowSampling], n_vocab: int) -> list[Sampled]:
    """One token for each row from last-position logits `(B, V)`."""
    logits = logits.float()
    if logits.shape[-1] > n_vocab:
        logits[:, n_vocab:] = float("-inf")  # padded vocabulary rows decode to nothing
    wants = [b for b, r in enumerate(rows) if r.params.logprobs is not None]
    logp = torch.log_softmax(logits[wants], dim=-1) if wants else None  # (b, V), before any processing
    for b, r in enumerate(rows):
        if r.counts is not None:
            p = r.params
            logits[b] -= r.counts * p.frequency_penalty + (r.counts > 0).float() * p.presence_penalty
    tokens: list[int] = [0] * len(rows)
    groups: dict[tuple[float, float], list[int]] = {}
    for b, r in enumerate(rows):
        groups.setdefault((r.params.temperature, r.params.top_p), []).append(b)
    for (temperature, _), idx in groups.items():
        group = logits if len(idx) == len(rows) else logits[idx]  # the usual case, one group: no copy
        processed = process_logits(group, rows[idx[0]]._processing)  # (b, V)
        if temperature == 0:
            for b, t in zip(idx, processed.argmax(dim=-1).tolist(), strict=True):
                tokens[b] = t
            continue
        probs = torch.softmax(processed, dim=-1)  # (b, V)
        shared = [j for j, b in enumerate(idx) if rows[b].generator is None]
        if shared:
            drawn = torch.multinomial(probs[shared], 1).squeeze(-1).tolist()
            for j, t in zip(shared, drawn, strict=True):
                tokens[idx[j]] = t
        for j, b in enumerate(idx):
            if rows[b].generator is not None:
                tokens[b] = torch.multinomial(probs[j : j + 1], 1, generator=rows[b].generator).item()
    out = []
    for b, (r, t) in enumerate(zip(rows, tokens, strict=True)):
        r.record(t)
        if logp is None or r.params.logprobs is None:
            out.append(Sampled(t))
            continue
        row_logp = logp[wants.index(b)]  # (V,)
        top = []
        if r.params.logprobs > 0:
            values, ids = torch.topk(row_logp, r.params.logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        out.append(Sampled(t, row_logp[t].item(), top))
    return out
