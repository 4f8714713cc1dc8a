"""The fused Triton causal attention against a float64 reference: output, the three gradients, and dropout.

The accuracy rule is flash-attention's: in each dtype the kernel's error against float64 must be within 2× of the
error PyTorch's own SDPA makes in that dtype, plus two units of the dtype's rounding (`_slack`) so that cases where
SDPA happens to be exact (T=1) do not demand exactness. On the CPU these run in Triton's interpreter (see conftest).
"""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from gpt2tui.kernels import (  # noqa: E402
    AttentionBackendError,
    attention,  # noqa: E402
    causal_attention_ref,
    resolve_backend,
)
from gpt2tui.kernels.attention import attention_dropout_mask  # noqa: E402
from gpt2tui.kernels.library import causal_attention  # noqa: E402
from gpt2tui_testkit.compiled import sm90  # noqa: E402

ON_CUDA = torch.cuda.is_available()
# Triton 3.9's interpreter multiplies bfloat16 tiles wrongly (it reads the raw bits); bfloat16 is checked on CUDA.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_CUDA else [])


def _qkv(B, H, T, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(device=device, dtype=dtype) for _ in range(3)]


def _slack(dtype, refs):
    # Two rounding steps at the problem's scale: the largest reference value among output and gradients (at least 1).
    # With T=1 SDPA is exact (dq = 0, dV = dO), while a flash backward recomputes P = exp2(s - lse) from a second
    # product, and dS = P (dP - Δ) cancels terms of dO·V's size: an ulp of those, not of the (zero) result, is honest.
    return 2 * torch.finfo(dtype).eps * max([1.0] + [r.abs().max().item() for r in refs])


def _run(fn, q, k, v, do):
    """Output and (dq, dk, dv) of `fn` on leaf copies of q, k, v."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return out.detach(), [t.grad for t in (q, k, v)]


def _assert_close_to_reference(q, k, v, dropout_mask=None, dropout_p=0.0, seed=None):
    do = torch.randn_like(q)
    ref, ref_grads = _run(
        lambda a, b, c: causal_attention_ref(a, b, c, dropout_p=dropout_p, dropout_mask=dropout_mask), q.double(),
        k.double(), v.double(), do.double()
    )
    if dropout_mask is None:
        pt, pt_grads = _run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), q, k, v, do)
    else:  # SDPA cannot take our mask: the same-dtype baseline is the reference run in that dtype.
        pt, pt_grads = _run(
            lambda a, b, c: causal_attention_ref(a, b, c, dropout_p=dropout_p, dropout_mask=dropout_mask), q, k, v, do
        )
    out, grads = _run(lambda a, b, c: causal_attention(a, b, c, dropout_p=dropout_p, seed=seed), q, k, v, do)
    assert out.dtype == q.dtype and out.shape == q.shape
    slack = _slack(q.dtype, [ref, *ref_grads])
    for name, got, base, want in [("out", out, pt, ref)] + list(zip(("dq", "dk", "dv"), grads, pt_grads, ref_grads, strict=True)):
        err = (got.double() - want).abs().max().item()
        pt_err = (base.double() - want).abs().max().item()
        assert err <= 2 * pt_err + slack, f"{name}: error {err:.3g}, SDPA's {pt_err:.3g}"


@pytest.mark.parametrize("T", [1, 37, 129])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_output_and_gradients_match_float64(T, dtype, device):
    q, k, v = _qkv(3, 5, T, 32, dtype, device)  # B·H = 15: not a multiple of any block or warp count
    _assert_close_to_reference(q, k, v)


@pytest.mark.parametrize("D", [16, 32, 64, 128])
def test_every_supported_head_dim(D, device):
    _assert_close_to_reference(*_qkv(1, 3, 45, D, torch.float32, device, seed=D))


def test_long_sequence_not_a_multiple_of_any_block(device):
    _assert_close_to_reference(*_qkv(1, 1, 1000, 16, torch.float32, device, seed=7))


def test_strided_views_as_the_model_makes_them(device):
    """q, k, v as slices of one fused projection (B, T, 3C) viewed as heads: nothing is copied, all is right."""
    B, T, H, D = 2, 33, 3, 16
    qkv = torch.randn(B, T, 3 * H * D, device=device)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))  # (B, H, T, D), strided
    assert not q.is_contiguous()
    _assert_close_to_reference(q, k, v)


def _model_layout(q, k, v):
    """q, k, v as the model hands them over: (B, H, T, D) views of one (B, T, 3·H·D) projection."""
    B, H, T, D = q.shape
    qkv = torch.cat([t.transpose(1, 2).reshape(B, T, H * D) for t in (q, k, v)], dim=2)
    return [t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2)]


def test_output_and_gradients_come_in_the_inputs_memory_order(device):
    """For the model's views, results are (B, T, H, D) in memory, so its transpose back to (B, T, C) and autograd's
    view backward cost no copy; for contiguous inputs they are contiguous."""
    base = _qkv(2, 3, 37, 16, torch.float32, device)
    for layout in ("contiguous", "model"):
        q, k, v = (t.requires_grad_() for t in base) if layout == "contiguous" else _model_layout(
            *(t.clone().requires_grad_() for t in base))
        out = causal_attention(q, k, v)
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), do)
        for t in (out, *grads):
            assert t.shape == (2, 3, 37, 16)
            assert (t.transpose(1, 2) if layout == "model" else t).is_contiguous(), layout
        want = causal_attention_ref(q.double(), k.double(), v.double())
        assert (out.double() - want).abs().max() < 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "model"])
def test_every_element_is_written(device, monkeypatch, layout):
    """Buffers start as NaN; any element a kernel skipped would surface in the output or a gradient."""

    empty = attention._empty

    def poisoned(shape, dtype, device, stride=None):
        return empty(shape, dtype, device, stride).fill_(float("nan") if dtype.is_floating_point else 3)

    monkeypatch.setattr(attention, "_empty", poisoned)
    for T in (1, 31, 70):
        q, k, v = _qkv(2, 3, T, 16, torch.float32, device, seed=T)
        if layout == "model":
            q, k, v = _model_layout(q, k, v)
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = causal_attention(q, k, v, dropout_p=0.2, seed=5)
        out.sum().backward()
        for t in (out, q.grad, k.grad, v.grad):
            assert torch.isfinite(t).all()
        mask = attention_dropout_mask(5, 2, 3, T, 0.2, device=device)
        assert mask.dtype == torch.bool


def test_scale_argument(device):
    q, k, v = _qkv(1, 2, 20, 16, torch.float32, device)
    want = causal_attention_ref(q.double(), k.double(), v.double(), scale=0.3)
    assert (causal_attention(q, k, v, scale=0.3).double() - want).abs().max() < 1e-5


# -- dropout ------------------------------------------------------------------------------------------------------------


def test_dropout_same_seed_same_output_and_gradients(device):
    q, k, v = _qkv(2, 3, 40, 16, torch.float32, device)
    do = torch.randn_like(q)
    run = lambda seed: _run(lambda a, b, c: causal_attention(a, b, c, dropout_p=0.3, seed=seed), q, k, v, do)  # noqa: E731
    (o1, g1), (o2, g2), (o3, _) = run(11), run(11), run(12)
    assert torch.equal(o1, o2) and all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert not torch.equal(o1, o3)
    # Without an explicit seed the draw comes from torch's generator, so manual_seed repeats a run.
    torch.manual_seed(0)
    a = causal_attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(0)
    assert torch.equal(a, causal_attention(q, k, v, dropout_p=0.3))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_statistics(p, device):
    B, H, T = 2, 3, 96
    mask = attention_dropout_mask(123, B, H, T, p, device=device).cpu()
    n = mask.numel()
    kept = mask.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma
    # Independent across heads and positions: no two heads share a mask, and neighbouring entries are uncorrelated.
    assert not torch.equal(mask[0, 0], mask[0, 1]) and not torch.equal(mask[0, 0], mask[1, 0])
    a, b = mask[..., :-1].float().flatten(), mask[..., 1:].float().flatten()
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(corr.item()) < 5 / math.sqrt(a.numel())


@pytest.mark.parametrize("T", [1, 45])
def test_dropout_gradients_against_reference_with_the_same_mask(T, device):
    q, k, v = _qkv(2, 3, T, 32, torch.float32, device, seed=3)
    p, seed = 0.25, 99
    mask = attention_dropout_mask(seed, 2, 3, T, p, device=device)
    _assert_close_to_reference(q, k, v, dropout_mask=mask, dropout_p=p, seed=seed)


def test_dropout_expectation_is_the_undropped_attention(device):
    """Averaged over many seeds, dropout's output tends to attention without it (it is scaled by 1/(1-p))."""
    q, k, v = _qkv(1, 1, 16, 16, torch.float32, device)
    mean = sum(causal_attention(q, k, v, dropout_p=0.5, seed=s) for s in range(200)) / 200
    want = causal_attention(q, k, v)
    assert (mean - want).abs().mean() < 0.1 * want.abs().mean()


# -- dispatch and bad input ---------------------------------------------------------------------------------------------


def test_explicit_triton_says_why_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(AttentionBackendError, match="on cpu.*TRITON_INTERPRET"):
        resolve_backend("triton", "cpu")
    assert resolve_backend("auto", "cpu") == "sdpa"


def test_dispatch_takes_triton_where_it_runs(device):
    assert resolve_backend("triton", device, 64, torch.float16) == "triton"
    if ON_CUDA:
        assert resolve_backend("auto", "cuda", 64, torch.bfloat16) == "triton"
    # Head dims and dtypes the kernels do not take: auto quietly uses SDPA, an explicit request says why.
    assert resolve_backend("auto", "cuda", 48, torch.float16) == "sdpa"
    assert resolve_backend("auto", "cuda", 64, torch.float64) == "sdpa"
    with pytest.raises(AttentionBackendError, match="head dim 48"):
        resolve_backend("triton", device, 48, torch.float32)


@pytest.mark.parametrize(
    "shapes, match",
    [(((1, 2, 8, 16), (1, 2, 9, 16), (1, 2, 8, 16)), "one shape"), (((1, 2, 8, 24),) * 3, "head dims"),
     (((2, 8, 16),) * 3, "one shape")],
)
def test_bad_shapes_are_clear_errors(shapes, match, device):
    q, k, v = (torch.randn(s, device=device) for s in shapes)
    with pytest.raises(ValueError, match=match):
        causal_attention(q, k, v)


def test_bad_dropout_probability(device):
    q, k, v = _qkv(1, 1, 4, 16, torch.float32, device)
    with pytest.raises(ValueError, match="dropout_p"):
        causal_attention(q, k, v, dropout_p=1.0)


def test_float32_backward_keeps_its_compensated_sums_apart_from_the_dots():
    # The float32 dK/dV sums are Kahan-compensated so that their error does not grow with T (see `_accumulate`); were
    # Triton to fold `total + tile` back into `tl.dot`'s accumulator, they would be one FMA chain again. In the sm_90
    # build, the dots that make dV and dK must start from zero.
    import re

    types = {n: "*fp32" for n in ("Q", "K", "V", "DO", "STATS", "DK", "DV")}
    types.update(qk_scale="fp32", sm_scale="fp32", dropout_p="fp32")
    const = {"BLOCK_M": 32, "BLOCK_N": 64, "D": 16, "DROPOUT": False, "PRECISION": "ieee", "COMPENSATE": True}
    ttgir = sm90("attention", "_attn_bwd_dkdv_kernel", types, const, "ttgir")
    zeros = set(re.findall(r"(%cst\w*) = arith.constant dense<0\.0+e\+00> : tensor<64x16xf32", ttgir))
    # (BLOCK_N, BLOCK_M) x (BLOCK_M, D): the dots that make dV and dK tiles
    accumulators = re.findall(r"tt\.dot %\S+, %\S+, (%\S+) : tensor<64x32xf32", ttgir)
    assert accumulators and zeros, ttgir[:2000]
    assert set(accumulators) <= zeros, f"a dK/dV dot accumulates into a running sum: {accumulators}"


def test_kernels_launch_on_the_tensors_device_not_the_current_one(monkeypatch):
    # Triton launches on the current device; q on cuda:1 while cuda:0 is current must switch first, and only then.
    from types import SimpleNamespace

    on_cuda1 = SimpleNamespace(is_cuda=True, get_device=lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    switch = attention._on_device(on_cuda1)
    assert isinstance(switch, torch.cuda.device) and switch.idx == 1
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert not isinstance(attention._on_device(on_cuda1), torch.cuda.device)
    assert not isinstance(attention._on_device(torch.empty(1)), torch.cuda.device)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
def test_gpt2_shape_bf16_on_cuda():
    _assert_close_to_reference(*_qkv(4, 12, 1024, 64, torch.bfloat16, "cuda"))
