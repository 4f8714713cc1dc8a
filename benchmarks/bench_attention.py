"""Attention on CUDA: our Triton kernels against PyTorch SDPA and the explicit reference, at GPT-2 shapes, in one run.

    make gpu-check      # CUDA tests, then this file (and the other benchmarks)

Groups: causal forward and forward+backward at B=8, H=12, T=1024, D=64 in bfloat16 (GPT-2 124M training), the
forward+backward also at 4× the batch against SDPA; "triton" is our kernels through their custom ops
(`kernels/library.py`); and decode (one new query against a KV cache of 128…1024 tokens, batch 1: one layer's call
during generation).

pytest-benchmark's times are wall clock around a synchronised call, so they include Python and launch overhead. Each
test also records GPU time in `extra_info`: `triton.testing.do_bench` (CUDA events over back-to-back calls) and
`do_bench_cudagraph` (the calls replayed from a CUDA graph: the kernels alone, which is how a generation loop captured
in a graph runs them), with TFLOP/s from the FLOP counts below. On a machine without CUDA the module
skips: the interpreter's speed means nothing.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("attention benchmarks need CUDA", allow_module_level=True)

import triton  # noqa: E402
import triton.testing  # noqa: E402

from gpt2tui.kernels import causal_attention_ref, decode_attention_ref  # noqa: E402
from gpt2tui.kernels.library import causal_attention, decode_attention  # noqa: E402
from gpt2tui.kernels.sdpa import causal_attention_sdpa, decode_attention_sdpa  # noqa: E402

B, H, T, D = 8, 12, 1024, 64
DTYPE = torch.bfloat16
# Causal attention does half the work of full attention: 2 matmuls of 2·T·T·D flops per head, halved.
FWD_FLOPS = 2 * B * H * T * T * D
BWD_FLOPS = 2.5 * FWD_FLOPS  # five matmuls to the forward's two (FlashAttention-2's accounting)


CAUSAL = {"triton": causal_attention, "sdpa": causal_attention_sdpa, "reference": causal_attention_ref}


@pytest.fixture(scope="module")
def qkv():
    torch.manual_seed(0)
    return [torch.randn(B, H, T, D, device="cuda", dtype=DTYPE, requires_grad=True) for _ in range(3)]


def _timed(benchmark, fn, flops, rounds=20, iterations=10, cudagraph=False):
    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=rounds, iterations=iterations, warmup_rounds=3)
    ms = triton.testing.do_bench(fn, warmup=50, rep=200)
    benchmark.extra_info["gpu_us"] = round(ms * 1e3, 2)
    benchmark.extra_info["tflops"] = round(flops / (ms * 1e-3) / 1e12, 1)
    if cudagraph:
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                graph_ms = triton.testing.do_bench_cudagraph(fn, rep=200)
        except RuntimeError as err:  # a capture the path refuses is a finding to record, not a reason to lose the rest
            benchmark.extra_info["gpu_us_cudagraph"] = f"capture failed: {err}"
        else:
            benchmark.extra_info["gpu_us_cudagraph"] = round(graph_ms * 1e3, 2)
    benchmark.extra_info["device"] = torch.cuda.get_device_name()


def _record_configs(benchmark):
    """The block sizes the autotuner chose, for RESULTS.md and for the next round of tuning."""
    from gpt2tui.kernels import attention

    for name in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"):
        best = getattr(getattr(attention, name), "best_config", None)
        if best is not None:
            benchmark.extra_info[name] = str(best)


@pytest.mark.parametrize("impl", list(CAUSAL))
@pytest.mark.benchmark(group="attention-forward-B8-H12-T1024-D64-bf16")
def test_causal_forward(benchmark, impl, qkv):
    q, k, v = qkv
    fn = CAUSAL[impl]

    def forward():
        with torch.no_grad():
            fn(q, k, v)

    _timed(benchmark, forward, FWD_FLOPS, cudagraph=True)
    if impl == "triton":
        _record_configs(benchmark)


@pytest.mark.parametrize("impl", list(CAUSAL))
@pytest.mark.benchmark(group="attention-forward-backward-B8-H12-T1024-D64-bf16")
def test_causal_forward_backward(benchmark, impl, qkv):
    q, k, v = qkv
    do = torch.randn_like(q)
    fn = CAUSAL[impl]

    def step():
        torch.autograd.grad(fn(q, k, v), (q, k, v), do)

    # In a CUDA graph too: the kernels' time without the host's, which a lone step on a slow host is mostly about.
    _timed(benchmark, step, FWD_FLOPS + BWD_FLOPS, rounds=10, cudagraph=True)
    if impl == "triton":
        _record_configs(benchmark)


@pytest.mark.parametrize("impl", ["triton", "sdpa"])
@pytest.mark.benchmark(group="attention-forward-backward-B32-H12-T1024-D64-bf16")
def test_causal_forward_backward_four_times_the_batch(benchmark, impl):
    """The step above at 4× the batch: its kernels then take longer than a slow host needs to issue them, so `do_bench`
    measures the kernels rather than the host (RESULTS.md: at B=8 on the H100 machine the GPU waited for the host)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(4 * B, H, T, D, device="cuda", dtype=DTYPE, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    fn = CAUSAL[impl]

    def step():
        torch.autograd.grad(fn(q, k, v), (q, k, v), do)

    _timed(benchmark, step, 4 * (FWD_FLOPS + BWD_FLOPS), rounds=5)


DECODE = {
    "triton": lambda q, k, v, lens, n: decode_attention(q, k, v, lens, max_len=n),
    "sdpa": lambda q, k, v, lens, n: decode_attention_sdpa(q, k, v, lens, max_len=n),
    "reference": lambda q, k, v, lens, n: decode_attention_ref(q, k, v, lens),
}


@pytest.mark.parametrize("cached", [128, 256, 512, 1024])
@pytest.mark.parametrize("impl", list(DECODE))
def test_decode_one_layer(benchmark, impl, cached):
    benchmark.group = f"decode-B1-H12-D64-bf16-cache{cached}"
    torch.manual_seed(0)
    k_cache, v_cache = (torch.randn(1, H, 1024, D, device="cuda", dtype=DTYPE) for _ in range(2))
    q = torch.randn(1, H, 1, D, device="cuda", dtype=DTYPE)
    lens = torch.tensor([cached], device="cuda", dtype=torch.int32)
    fn = DECODE[impl]
    _timed(benchmark, lambda: fn(q, k_cache, v_cache, lens, cached), 4 * H * cached * D, rounds=50, iterations=20,
           cudagraph=True)


def test_benchmarked_paths_agree(qkv):
    """On the benchmark's inputs, with the tuned block sizes, the Triton output and gradients are as close to a float32
    reference as SDPA's are (within 2×, plus one bf16 rounding step)."""
    q, k, v = (t.detach().requires_grad_() for t in qkv)
    do = torch.randn_like(q)
    ref = causal_attention_ref(q.float(), k.float(), v.float())
    want = [ref.detach(), *torch.autograd.grad(ref, (q, k, v), do.float())]
    for name in ("triton", "sdpa"):
        out = CAUSAL[name](q, k, v)
        got = [out.detach(), *torch.autograd.grad(out, (q, k, v), do)]
        errors = [(g.float() - w.float()).abs().max().item() for g, w in zip(got, want, strict=True)]
        if name == "triton":
            mine = errors
        else:
            slack = torch.finfo(DTYPE).eps * max(w.abs().max().item() for w in want)
            assert all(m <= 2 * e + slack for m, e in zip(mine, errors, strict=True)), (mine, errors)
