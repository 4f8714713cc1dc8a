"""The attention ops' PyTorch paths against a float64 reference, and the dispatch rule."""

import pytest
import torch

from gpt2tui.kernels import (
    AttentionBackendError,
    causal_attention,
    causal_attention_ref,
    decode_attention,
    decode_attention_ref,
    resolve_backend,
)


def _qkv(B, H, T, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("T", [1, 37, 129])
@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_causal_attention_matches_float64_reference(T, backend):
    q, k, v = _qkv(3, 5, T, 16)
    want = causal_attention_ref(q.double(), k.double(), v.double())
    got = causal_attention(q, k, v, backend=backend)
    assert got.dtype == torch.float32 and (got.double() - want).abs().max() < 1e-5


def test_reference_gradients_match_sdpa():
    q, k, v = (t.requires_grad_() for t in _qkv(2, 3, 33, 32, dtype=torch.float64))
    causal_attention_ref(q, k, v).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    causal_attention(q, k, v, backend="sdpa").sum().backward()
    for a, t in zip(grads, (q, k, v), strict=True):
        assert torch.allclose(a, t.grad, atol=1e-10)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_decode_attention_equals_the_last_rows_of_causal_attention(backend):
    """Rows of different lengths in one cache: each row's new queries see exactly its own prefix."""
    H, D, S_max, n = 4, 16, 50, 3
    lens = [7, 50, 19]
    cache_k, cache_v = torch.randn(3, H, S_max, D), torch.randn(3, H, S_max, D)
    q = torch.randn(3, H, n, D)
    got = decode_attention(q, cache_k, cache_v, torch.tensor(lens), backend=backend, max_len=max(lens))
    for b, L in enumerate(lens):
        full_q = torch.cat([torch.randn(1, H, L - n, D), q[b : b + 1]], dim=2)
        want = causal_attention_ref(full_q.double(), cache_k[b : b + 1, :, :L].double(), cache_v[b : b + 1, :, :L].double())
        assert (got[b : b + 1].double() - want[:, :, -n:]).abs().max() < 1e-5


def test_decode_single_query_fast_path_equals_masked_path():
    k, v = torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8)
    q = torch.randn(1, 2, 1, 8)
    lens = torch.tensor([23])
    fast = decode_attention(q, k, v, lens, backend="sdpa", max_len=23)
    assert torch.allclose(fast, decode_attention_ref(q, k, v, lens), atol=1e-6)


def test_dispatch_rule(monkeypatch):
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend(None, "cpu") == "sdpa"
    assert resolve_backend("reference", "cpu") == "reference"
    monkeypatch.setenv("GPT2TUI_ATTENTION", "reference")
    assert resolve_backend("sdpa", "cpu") == "reference"  # the environment overrides the config
    monkeypatch.setenv("GPT2TUI_ATTENTION", "bogus")
    with pytest.raises(AttentionBackendError, match=r"unknown attention backend 'bogus' \(from \$GPT2TUI_ATTENTION\)"):
        resolve_backend("auto", "cpu")


def test_an_explicit_request_that_cannot_run_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(AttentionBackendError, match="'triton' cannot run here: the tensors are on cpu"):
        causal_attention(*_qkv(1, 1, 4, 8), backend="triton")
