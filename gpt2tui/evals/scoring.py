"""Log-likelihoods of continuations: the one computation every task and the lm-eval adapter stand on.

A request is `(context, continuation)` as token ids; its score is the sum of the continuation tokens'
log-probabilities given everything before them, how many tokens that is, and whether greedy decoding would have
produced the continuation (each of its tokens is the argmax at its position): lm-eval's `(logprob, is_greedy)`.

Inputs longer than the window lose context from the left, as lm-eval truncates: the model sees the last
`context_length` tokens of `context + continuation[:-1]`, and the whole continuation is scored (a continuation longer
than the window is refused: no task here makes one, and lm-eval would score garbage for it).

Two paths, one answer:

- Contexts that occur once (LAMBADA, WikiText's windows) run as plain right-padded batches, no cache.
- Contexts shared by several continuations (HellaSwag's four endings, any multiple-choice task) are prefilled once
  into a `KVCache`, whose rows are then copied per continuation (`select_rows`), and only the continuations run
  against it: the context's compute is paid once rather than once per choice.

Either way only the continuation positions go through the output head, by the fused cross-entropy
(`GPT2.head_loss`, `reduction="none"`), so no `(B, T, V)` logits are ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gpt2tui.cache import KVCache
from gpt2tui.model import GPT2

Pair = tuple[Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class Score:
    logprob: float  # natural-log probability of the whole continuation
    n_tokens: int
    greedy: bool  # every continuation token is the model's argmax


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-eval's `TemplateLM` makes them: spaces at the end of the context move to
    the continuation, the two are encoded together and split after the context's own tokens (so a merge across the
    boundary cannot happen in one and not the other); an empty context becomes `<|endoftext|>`."""
    if not context:
        return [tokenizer.eot_token], encode(tokenizer, continuation)
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def encode(tokenizer, text: str) -> list[int]:
    """Task text as Hugging Face's GPT-2 tokenizer reads it: a literal `<|endoftext|>` is the special token."""
    return tokenizer.encode(text, allowed_special="all")


def rolling_windows(
    tokens: Sequence[int], prefix: int, max_len: int, stride: int
) -> list[tuple[list[int], list[int]]]:
    """A document as `(context, continuation)` windows that score each token exactly once, each window at most
    `max_len` tokens of input. The first predicts the first `max_len` tokens after `prefix`; each next one predicts
    the next `stride` tokens with as much preceding text as fits. `stride == max_len` is lm-eval's
    `loglikelihood_rolling` (its `get_rolling_token_windows` with `context_len=1`, made disjoint); a smaller stride
    gives every scored token at least `max_len - stride` tokens of context, at `max_len / stride` times the cost."""
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride {stride} must be between 1 and the window's {max_len} tokens")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    windows = [([prefix], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(stride, len(tokens) - done)
        end = done + n
        seen = tokens[
            end - max_len - 1 : end - 1
        ]  # the window's input: max_len tokens ending before the last target
        windows.append((seen[: len(seen) - (n - 1)], tokens[done:end]))
        done = end
    return windows


def _fit(
    context: Sequence[int], continuation: Sequence[int], max_len: int
) -> tuple[tuple[int, ...], list[int]]:
    if not continuation:
        raise ValueError("an empty continuation has no likelihood to score")
    if not context:
        raise ValueError("a request needs at least one context token (lm-eval passes <|endoftext|> for none)")
    if len(continuation) > max_len:
        raise ValueError(
            f"a continuation of {len(continuation)} tokens does not fit the {max_len}-token window; "
            "score it in windows (rolling_windows)"
        )
    keep = max_len + 1 - len(continuation)  # the input is context + continuation[:-1], at most max_len tokens
    return tuple(context[-keep:]), list(continuation)


@torch.inference_mode()
def score(
    model: GPT2, pairs: Sequence[Pair], batch_size: int = 16, progress: Callable[[int], None] | None = None
) -> list[Score]:
    """One `Score` per `(context, continuation)` pair, in order. `batch_size` bounds the continuations per forward;
    `progress(n)` hears of every `n` requests finished. The model should be in eval mode (dropout off)."""
    max_len = model.config.context_length
    fitted = [_fit(c, x, max_len) for c, x in pairs]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(fitted):
        groups.setdefault(ctx, []).append(i)
    out: list[Score | None] = [None] * len(fitted)
    singles = sorted(
        (ix[0] for ix in groups.values() if len(ix) == 1),
        key=lambda i: -(len(fitted[i][0]) + len(fitted[i][1])),
    )  # similar lengths share a batch
    for s in range(0, len(singles), batch_size):
        rows = singles[s : s + batch_size]
        _store(out, rows, _plain(model, [fitted[i] for i in rows]), progress)
    shared = sorted((ix for ix in groups.values() if len(ix) > 1), key=lambda ix: -len(fitted[ix[0]][0]))
    for rows in _shared_batches(shared, fitted, batch_size, max_len):
        _store(out, rows, _cached(model, [fitted[i] for i in rows]), progress)
    return out  # type: ignore[return-value]


def _store(out: list, rows: list[int], scores: list[Score], progress) -> None:
    for i, s in zip(rows, scores, strict=True):
        out[i] = s
    if progress is not None:
        progress(len(rows))


def _shared_batches(groups: list[list[int]], fitted, batch_size: int, max_len: int):
    """Rows of groups that share contexts, at most `batch_size` a batch, such that the longest context plus the
    longest continuation fits the window (the padded positions of every row must stay inside it)."""
    batch: list[int] = []
    longest_ctx = longest_cont = 0
    for group in groups:
        for i in group:
            ctx, cont = fitted[i]
            c, x = max(longest_ctx, len(ctx)), max(longest_cont, len(cont))
            if batch and (len(batch) == batch_size or c + x - 1 > max_len):
                yield batch
                batch, c, x = [], len(ctx), len(cont)
            batch.append(i)
            longest_ctx, longest_cont = c, x
    if batch:
        yield batch


def _scores(model: GPT2, h: torch.Tensor, targets: torch.Tensor) -> list[Score]:
    """Scores from the hidden states `(B, T, C)` that predict `targets` `(B, T)` (-100 where nothing is scored):
    only the scored positions reach the head."""
    mask = targets != -100  # (B, T)
    scored = targets[mask][None]  # (1, N): as one row, the shape every head (packed ones too) takes
    loss, argmax = model.head_loss(
        h[mask][None], scored, reduction="none", return_argmax=True
    )  # (1, N), (1, N)
    logprob = (-loss[0].double()).cpu()
    hit = (argmax[0] == scored[0]).cpu()
    counts = mask.sum(1).tolist()
    scores, s = [], 0
    for n in counts:
        scores.append(Score(float(logprob[s : s + n].sum()), n, bool(hit[s : s + n].all())))
        s += n
    return scores


def _plain(model: GPT2, rows: list[tuple[tuple[int, ...], list[int]]]) -> list[Score]:
    device = model.device
    inputs = [list(ctx) + cont[:-1] for ctx, cont in rows]
    T = max(len(x) for x in inputs)
    ids = torch.zeros(
        len(rows), T, dtype=torch.long
    )  # (B, T) right-padded: padding comes after what is scored
    targets = torch.full((len(rows), T), -100, dtype=torch.long)  # (B, T)
    for b, ((ctx, cont), x) in enumerate(zip(rows, inputs, strict=True)):
        ids[b, : len(x)] = torch.tensor(x)
        targets[b, len(ctx) - 1 : len(x)] = torch.tensor(cont)
    h = model.hidden(ids.to(device))  # (B, T, C)
    return _scores(model, h, targets.to(device))


def _cached(model: GPT2, rows: list[tuple[tuple[int, ...], list[int]]]) -> list[Score]:
    """Each distinct context prefilled once, its cache row copied for each continuation, the continuations run."""
    device = model.device
    contexts = list(dict.fromkeys(ctx for ctx, _ in rows))
    which = [contexts.index(ctx) for ctx, _ in rows]
    lens = [len(c) for c in contexts]
    Tc = max(len(cont) for _, cont in rows)
    cache = KVCache.for_model(model, len(contexts), max_len=max(lens) + Tc - 1)
    ids = torch.zeros(len(contexts), max(lens), dtype=torch.long)  # (Bc, Tx)
    for b, ctx in enumerate(contexts):
        ids[b, : len(ctx)] = torch.tensor(ctx)
    h = model.hidden(ids.to(device), cache)  # (Bc, Tx, C)
    last = h[torch.arange(len(contexts), device=device), torch.tensor(lens, device=device) - 1]  # (Bc, C)
    cache.set_lengths(lens)  # the padding past each context is overwritten by its continuations
    cache.select_rows(which)
    index = torch.tensor(which, device=device)
    parts = [last.index_select(0, index)[:, None]]  # (B, 1, C): predicts each continuation's first token
    targets = torch.full((len(rows), Tc), -100, dtype=torch.long)  # (B, Tc)
    for b, (_, cont) in enumerate(rows):
        targets[b, : len(cont)] = torch.tensor(cont)
    if Tc > 1:
        feed = targets[:, : Tc - 1].clamp(min=0)  # (B, Tc - 1): each continuation but its last token
        parts.append(model.hidden(feed.to(device), cache))  # (B, Tc - 1, C)
    return _scores(model, torch.cat(parts, dim=1), targets.to(device))  # (B, Tc, C)
