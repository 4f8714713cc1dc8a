"""The Triton flash-decoding kernel (kernels/decode.py) against the float64 reference.

Runs on CUDA where there is one and otherwise in Triton's interpreter on the CPU (TRITON_INTERPRET=1, which must be set
before Triton decorates any kernel: tests/kernels/conftest.py does it for the whole folder).

Accuracy rule (flash-attention's): the kernel's max abs error against a float64 reference may be at most twice what
PyTorch's own SDPA path makes on the same inputs in the same dtype, plus a slack of eps(dtype) · max|v| (see `_tol`).
"""

import pytest
import torch

pytest.importorskip("triton")

from gpt2tui.kernels import decode  # noqa: E402
from gpt2tui.kernels.decode import choose_num_splits, decode_attention  # noqa: E402
from gpt2tui.kernels.reference import decode_attention_ref  # noqa: E402
from gpt2tui.kernels.sdpa import decode_attention_sdpa  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# All three dtypes run in the interpreter too (bf16 products go through fp32 there; see kernels/decode.py `_dot`).
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _poison_buffers(monkeypatch):
    """The output and the splits' scratch come out of torch.empty full of NaN, so a value never written, or a merge
    that reads a split before it is written (memory reused from an earlier call could otherwise hold the right
    numbers), shows up as NaN."""
    def poison(make):
        def poisoned(*args, **kwargs):
            t = make(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t

        return poisoned

    monkeypatch.setattr(decode.torch, "empty", poison(torch.empty))
    monkeypatch.setattr(decode.torch, "empty_strided", poison(torch.empty_strided))


@pytest.fixture
def poisoned(monkeypatch):
    _poison_buffers(monkeypatch)


def _inputs(B, H, n, S_max, D, lens, dtype, seed=0):
    """q (B, H, n, D) and a cache (B, H, S_max, D) filled everywhere (stale entries beyond each length are random)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n, D, generator=g)
    k = torch.randn(B, H, S_max, D, generator=g)
    v = torch.randn(B, H, S_max, D, generator=g)
    lens = torch.tensor(lens, dtype=torch.int64)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype), lens.to(DEVICE)


def _tol(q, k, v, lens, want):
    """2 × SDPA's error + eps(dtype) · max|v over valid positions|.

    The slack covers the one rounding the 2× rule cannot see when SDPA happens to be near-exact: the kernel rounds
    each softmax weight p to the input dtype before the p·V product (as flash-attention does on tensor cores; the CPU
    SDPA keeps p in fp32), a relative error <= eps/2 per weight, so at most eps/2 · Σ p|v| <= eps/2 · max|v|; the final
    rounding of the output to the dtype adds another eps/2 · |out| <= eps/2 · max|v|. In fp32 this is ~5e-7.
    """
    S = k.shape[2]
    sdpa = decode_attention_sdpa(q, k, v, lens, max_len=int(lens.max()))
    sdpa_err = (sdpa.double() - want).abs().max().item()
    valid = (torch.arange(S, device=lens.device)[None, :] < lens[:, None])[:, None, :, None]  # (B, 1, S, 1)
    v_max = v.double().abs().masked_fill(~valid, 0).max().item()
    return 2 * sdpa_err + torch.finfo(q.dtype).eps * v_max


def _assert_matches(out, q, k, v, lens, clean_k=None, clean_v=None):
    """`out` is finite, shaped and typed like q, and within tolerance of the float64 reference (on clean caches)."""
    k = k if clean_k is None else clean_k
    v = v if clean_v is None else clean_v
    want = decode_attention_ref(q.double(), k.double(), v.double(), lens, upcast=True)  # (B, H, n, D) float64
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    assert torch.isfinite(out).all(), "output has NaN/inf (unwritten or poisoned)"
    err = (out.double() - want).abs().max().item()
    tol = _tol(q, k, v, lens, want)
    assert err <= tol, f"max abs error {err:.3e} > tolerance {tol:.3e}"
    return err


CASES = {
    # name: (B, H, n, S_max, lens); B·H = 15 is odd, lengths straddle the 64-key blocks
    "decode": (3, 5, 1, 160, (1, 37, 129)),
    "chunked-prefill": (3, 5, 5, 160, (5, 40, 130)),
    "two-query-blocks": (3, 5, 70, 160, (70, 71, 150)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(case, dtype, poisoned):
    B, H, n, S_max, lens = CASES[case]
    q, k, v, L = _inputs(B, H, n, S_max, 32, lens, dtype)
    _assert_matches(decode_attention(q, k, v, L, max_len=max(lens)), q, k, v, L)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [16, 32, 64, 128])
def test_head_dims(D, dtype):
    q, k, v, L = _inputs(2, 3, 3, 96, D, (3, 77), dtype, seed=D)
    _assert_matches(decode_attention(q, k, v, L, num_splits=2), q, k, v, L)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forced_splits_agree(dtype, poisoned):
    """1, 2, 3 and 7 key splits (of 64-key blocks, over 300 keys: 7 leaves whole splits empty, and the short row is
    empty in all but its first) give the reference's answer and each other's."""
    lens = (5, 300, 170)
    q, k, v, L = _inputs(3, 2, 5, 300, 16, lens, dtype, seed=1)
    outs = {s: decode_attention(q, k, v, L, max_len=max(lens), num_splits=s) for s in (1, 2, 3, 7)}
    for out in outs.values():
        _assert_matches(out, q, k, v, L)
    want = decode_attention_ref(q.double(), k.double(), v.double(), L, upcast=True)
    tol = _tol(q, k, v, L, want)
    for s, out in outs.items():
        assert (out.double() - outs[1].double()).abs().max().item() <= tol, f"{s} splits disagree with 1"


def test_heuristic_split_for_batch_one():
    """One row, one head: the default splits the keys (into 5 under the interpreter's notional 4 SMs: 300 float32 keys
    are 5 blocks of 64, and a split takes at least 1)."""
    q, k, v, L = _inputs(1, 1, 1, 320, 64, (300,), torch.float32, seed=2)
    _assert_matches(decode_attention(q, k, v, L), q, k, v, L)


def test_choose_num_splits():
    assert choose_num_splits(programs=12, max_len=1024, sm_count=132) == 8  # GPT-2 small, batch 1: 96 programs
    assert choose_num_splits(programs=12, max_len=100, sm_count=132) == 1  # too few keys to be worth a merge
    assert choose_num_splits(programs=12, max_len=256, sm_count=132) == 1  # one program reads 2 blocks sooner
    assert choose_num_splits(programs=12, max_len=257, sm_count=132) == 3
    assert choose_num_splits(programs=192, max_len=1024, sm_count=132) == 2  # B=16: just short of 2 per SM
    assert choose_num_splits(programs=384, max_len=1024, sm_count=132) == 1  # B=32: already fills the device
    assert choose_num_splits(programs=1, max_len=100_000, sm_count=132) == 64  # capped


@pytest.mark.parametrize("num_splits", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_views(dtype, num_splits, poisoned):
    """The cache is layer 1 of an (L, B, H, S_max, D) tensor and q a transposed (B, n, H, D) tensor, as the model
    passes them: nothing but the last dim is contiguous."""
    B, H, n, S_max, D, lens = 2, 3, 4, 100, 32, (4, 90)
    g = torch.Generator().manual_seed(3)
    cache_k = torch.randn(2, B, H, S_max, D, generator=g).to(DEVICE, dtype)  # (L, B, H, S_max, D)
    cache_v = torch.randn(2, B, H, S_max, D, generator=g).to(DEVICE, dtype)
    q = torch.randn(B, n, H, D, generator=g).to(DEVICE, dtype).transpose(1, 2)  # (B, H, n, D) view
    k, v = cache_k[1], cache_v[1]
    assert not q.is_contiguous()
    L = torch.tensor(lens, device=DEVICE, dtype=torch.int32)
    out = decode_attention(q, k, v, L, max_len=max(lens), num_splits=num_splits)
    _assert_matches(out, q.contiguous(), k.contiguous(), v.contiguous(), L)
    assert out.transpose(1, 2).is_contiguous()  # in q's memory order: the model's view back to (B, n, C) is free


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_stale_cache_entries_never_leak(dtype, num_splits, poisoned):
    """NaN and inf beyond each row's length (stale or never-written slots) must not reach the output."""
    lens = (2, 65, 150)
    q, k, v, L = _inputs(3, 2, 2, 192, 32, lens, dtype, seed=4)
    clean_k, clean_v = k.clone(), v.clone()
    for b, n_valid in enumerate(lens):
        k[b, :, n_valid:] = float("nan")
        v[b, :, n_valid:] = float("nan")
        k[b, 0, n_valid:] = float("inf")
    out = decode_attention(q, k, v, L, max_len=max(lens), num_splits=num_splits)
    _assert_matches(out, q, k, v, L, clean_k=clean_k, clean_v=clean_v)


def test_max_len_none_takes_the_whole_cache_and_int32_lengths():
    """Without max_len the splits cover all S_max positions (no device read, as a CUDA graph needs); those past a
    row's length hold no key it may see and weigh nothing in the merge."""
    lens = (9, 70)
    q, k, v, L = _inputs(2, 2, 3, 300, 16, lens, torch.float32, seed=5)
    given = decode_attention(q, k, v, L, max_len=max(lens))
    whole = decode_attention(q, k, v, L.to(torch.int32))
    _assert_matches(given, q, k, v, L)
    _assert_matches(whole, q, k, v, L)


def test_inference_only_output_has_no_graph():
    q, k, v, L = _inputs(1, 2, 1, 64, 16, (10,), torch.float32)
    out = decode_attention(q.requires_grad_(), k, v, L)
    assert out.grad_fn is None and not out.requires_grad


def _bad_inputs():
    def make(**over):
        q, k, v, L = _inputs(2, 3, 2, 32, 16, (2, 20), torch.float32)
        args = dict(q=q, k_cache=k, v_cache=v, cache_lens=L)
        args.update({key: (val(args) if callable(val) else val) for key, val in over.items()})
        return args

    return {
        "q rank": (make(q=lambda a: a["q"][0]), "4-d"),
        "k/v shapes": (make(v_cache=lambda a: a["v_cache"][:, :, :20]), "differ"),
        "batch mismatch": (
            make(k_cache=lambda a: a["k_cache"][:1], v_cache=lambda a: a["v_cache"][:1]),
            "does not match",
        ),
        "head dim 48": (
            make(
                q=lambda a: torch.zeros(2, 3, 2, 48, device=DEVICE),
                k_cache=lambda a: torch.zeros(2, 3, 32, 48, device=DEVICE),
                v_cache=lambda a: torch.zeros(2, 3, 32, 48, device=DEVICE),
            ),
            "head dim 48",
        ),
        "lens shape": (make(cache_lens=lambda a: torch.tensor([2, 20, 5], device=DEVICE)), "shape"),
        "lens dtype": (make(cache_lens=lambda a: a["cache_lens"].float()), "int32 or int64"),
        "dtype mismatch": (make(k_cache=lambda a: a["k_cache"].half()), "dtype"),
        "devices": (
            make(k_cache=lambda a: a["k_cache"].to("meta"), v_cache=lambda a: a["v_cache"].to("meta")),
            "device",
        ),
        "n > S_max": (make(q=lambda a: torch.zeros(2, 3, 40, 16, device=DEVICE)), "do not fit"),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_bad_inputs_raise_value_error(name):
    args, message = _bad_inputs()[name]
    with pytest.raises(ValueError, match=message):
        decode_attention(**args)


@pytest.mark.parametrize("kwargs", [dict(max_len=33), dict(max_len=1), dict(num_splits=0)], ids=str)
def test_bad_options_raise_value_error(kwargs):
    q, k, v, L = _inputs(2, 3, 2, 32, 16, (2, 20), torch.float32)
    with pytest.raises(ValueError, match="max_len|num_splits"):
        decode_attention(q, k, v, L, **kwargs)


# -- CUDA only ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 64])
def test_gpt2_small_batch_one_long_cache(n, dtype, poisoned):
    """GPT-2 small shapes at batch 1 (the heuristic splits the 1000 keys) and a batch of uneven rows."""
    q, k, v, L = _inputs(1, 12, n, 1024, 64, (1000,), dtype, seed=6)
    _assert_matches(decode_attention(q, k, v, L, max_len=1000), q, k, v, L)
    q, k, v, L = _inputs(4, 12, n, 1024, 64, (n, 333, 1024, 700), dtype, seed=7)
    _assert_matches(decode_attention(q, k, v, L, max_len=1024), q, k, v, L)
