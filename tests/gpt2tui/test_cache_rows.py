"""KVCache rows as slots: views of a run of rows that share storage, rows that move, swap and start over alone."""

from __future__ import annotations

import os

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, KVCache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return (
        GPT2(GPT2Config(n_layers=2, n_heads=2, emb_dim=32, context_length=32, drop_rate=0.0)).double().eval()
    )


def _last_logits(model: GPT2, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0, -1]  # (V,)


def test_a_view_writes_into_its_rows_and_their_lengths():
    cache = KVCache(n_layers=1, batch_size=4, n_heads=1, max_len=8, head_dim=2, dtype=torch.float64)
    view = cache.rows(1, 3)
    view.begin(2)
    view.write(0, torch.ones(2, 1, 2, 2, dtype=torch.float64), torch.ones(2, 1, 2, 2, dtype=torch.float64))
    view.commit()
    assert cache.lens == [0, 2, 2, 0]
    assert cache.k[0, 1:3, :, :2].eq(1).all() and cache.k[0, [0, 3]].eq(0).all()
    view.set_lengths([1, 2])
    assert cache.lens == [0, 1, 2, 0]
    with pytest.raises(ValueError):
        cache.rows(2, 5)


def test_rows_prefill_and_decode_independently_through_views(model):
    """Two sequences in rows 0 and 2 of one cache, each fed through its own view in chunks and single tokens, end
    with the logits of a plain forward over their whole sequences; moving and swapping rows keeps them."""
    a, b = [5, 6, 7, 8, 9, 10, 11], [20, 21, 22]
    cache = KVCache.for_model(model, batch_size=3)
    for row in (0, 2):
        cache.clear_row(row)
    with torch.inference_mode():
        model.hidden(torch.tensor([a[:4]]), cache.rows(0, 1))  # a's first chunk
        model.hidden(torch.tensor([b]), cache.rows(2, 3))  # b whole
        cache.move_row(2, 1)  # b moves next to a: now rows 0..1 are one run
        assert cache.lens == [4, 3, 3]
        model.hidden(torch.tensor([a[4:]]), cache.rows(0, 1))  # a's second chunk
        cache.swap_rows(0, 1)  # b first, a second
        both = model.head(
            model.hidden(torch.tensor([[23], [12]]), cache.rows(0, 2))[:, -1]
        )  # one decode step
    torch.testing.assert_close(both[0], _last_logits(model, b + [23]))
    torch.testing.assert_close(both[1], _last_logits(model, a + [12]))
    assert cache.lens[:2] == [4, 8]


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_a_cpu_cache_reads_as_zeros_and_takes_memory_only_where_written():
    """A server's cache holds whole windows for 16 rows (1.2 GB at the 124M shape); it costs what is used."""
    before = _rss_mb()
    cache = KVCache(n_layers=4, batch_size=16, n_heads=8, max_len=1024, head_dim=64)  # 2 x 128 MB
    assert _rss_mb() - before < 32
    assert cache.k[3, 15, 7, 1023].abs().sum() == 0 and cache.v.dtype == torch.float32
    cache.begin(4)
    cache.write(0, torch.ones(16, 8, 4, 64), torch.full((16, 8, 4, 64), 2.0))
    cache.commit()
    assert cache.k[0, :, :, :4].eq(1).all() and cache.v[0, :, :, :4].eq(2).all()
    assert cache.k[0, :, :, 4:].eq(0).all() and cache.lens == [4] * 16
    half = KVCache(n_layers=1, batch_size=1, n_heads=1, max_len=4, head_dim=2, dtype=torch.bfloat16)
    assert half.k.dtype == torch.bfloat16 and half.k.sum() == 0
