"""The scoring core against transformers on the same random weights: per-request log-likelihoods within 1e-4 and the
same greedy verdicts, through both paths (plain batches, and contexts shared through the KV cache), with truncation."""

from __future__ import annotations

import random

import pytest
import torch

from gpt2tui.evals.scoring import encode_pair, rolling_windows, score


def _requests(rng: random.Random, window: int) -> list[tuple[list[int], list[int]]]:
    """Contexts used once and contexts shared by 2-5 continuations, some too long for the window (truncated)."""
    pairs = []
    for _ in range(10):
        ctx = [rng.randrange(50257) for _ in range(rng.randint(1, window + 20))]
        for _ in range(rng.choice([1, 1, 2, 4, 5])):
            pairs.append((ctx, [rng.randrange(50257) for _ in range(rng.randint(1, 14))]))
    rng.shuffle(pairs)
    return pairs


def test_log_likelihoods_equal_transformers(ours, hf, hf_score):
    model = ours[0]
    window = model.config.context_length
    pairs = _requests(random.Random(1), window)
    # Greedy continuations too, so that `greedy` is checked true as well as false.
    for ctx in ([464, 3290, 318], [15496, 11, 995, 0] * 3):
        ids = list(ctx)
        for _ in range(4):
            ids.append(int(hf[0](torch.tensor([ids])).logits[0, -1].argmax()))
        pairs += [(ctx, ids[len(ctx) :]), (ctx, ids[len(ctx) : len(ctx) + 2])]
    assert any(len(c) + len(x) > window + 1 for c, x in pairs)  # truncation is exercised
    got = score(model, pairs, batch_size=3)
    want = [hf_score(c, x) for c, x in pairs]
    for (_, x), g, (logprob, greedy) in zip(pairs, got, want, strict=True):
        assert g.n_tokens == len(x)
        assert g.logprob == pytest.approx(logprob, abs=1e-4)
        assert g.greedy == greedy
    assert sum(g.greedy for g in got) >= 4


def test_the_batch_size_changes_nothing(ours):
    pairs = _requests(random.Random(2), ours[0].config.context_length)
    one = score(ours[0], pairs, batch_size=1)
    many = score(ours[0], pairs, batch_size=16)
    assert [s.logprob for s in one] == pytest.approx([s.logprob for s in many], abs=1e-4)


def test_encode_pair_is_lm_evals_rule(ours, hf):
    tokenizer, hf_tok = ours[1], hf[1]
    for context, continuation in [("The cat sat on the", " mat"), ("Trailing space ", "word"), ("", "Alone")]:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not context:
            assert ctx == [tokenizer.eot_token] and cont == hf_tok.encode(continuation)
            continue
        n = len(context) - len(context.rstrip())
        c, x = context[: len(context) - n], context[len(context) - n :] + continuation
        assert ctx == hf_tok.encode(c) and ctx + cont == hf_tok.encode(c + x)


@pytest.mark.parametrize("stride", [1, 7, 16, 48])
def test_rolling_windows_score_each_token_once_with_the_most_context(stride):
    tokens = list(range(1000, 1130))
    windows = rolling_windows(tokens, 50256, 48, stride)
    assert [t for _, cont in windows for t in cont] == tokens
    sequence = [50256, *tokens]
    for ctx, cont in windows:
        fed = ctx + cont[:-1]
        assert len(fed) <= 48
        end = sequence.index(cont[-1])
        assert fed == sequence[max(0, end - 48) : end]  # the window ends right before its last target


def test_rolling_windows_at_full_stride_are_lm_evals():
    utils = pytest.importorskip("lm_eval.utils", reason="the eval extra (lm-eval) is not installed")
    tokens = list(range(2000, 2100))
    theirs = [
        utils.make_disjoint_window(w)
        for w in utils.get_rolling_token_windows(
            token_list=tokens, prefix_token=50256, max_seq_len=48, context_len=1
        )
    ]
    assert rolling_windows(tokens, 50256, 48, 48) == [(list(a), list(b)) for a, b in theirs]


def test_a_request_the_window_cannot_hold_is_refused(ours):
    with pytest.raises(ValueError, match="does not fit"):
        score(ours[0], [([1], list(range(100)))])
    with pytest.raises(ValueError, match="empty continuation"):
        score(ours[0], [([1], [])])
