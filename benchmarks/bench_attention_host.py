"""The host's share of the Triton attention: the Python around each kernel launch, timed on the CPU.

    .venv/bin/python -m pytest benchmarks/bench_attention_host.py --benchmark-only

On a GPU the forward+backward step waits for the host (RESULTS.md, attention, third run), so every microsecond of
Python between launches counts. Here Triton's launcher itself (`JITFunction.run`, which needs a GPU) is replaced by a
no-op, and the autotuner's benchmarking by a constant, so what is timed is the rest: our launchers, Triton's
`Autotuner.run`, and autograd. Groups, each with the fast path beside its baseline:

- ``attention-host-launch``: one autotuned launch of the dK/dV kernel, through `Autotuner.run` on every call (the
  baseline) or through `attention._launch`, which calls the kernel with the tuned config once a key is tuned;
- ``attention-host-step``: a whole forward+backward at GPT-2 124M's shape (B=8, H=12, T=1024, D=64, bfloat16) through
  `causal_attention` and autograd, with every launch going through the autotuner (baseline) or `_launch`;
- ``attention-host-decode``: one layer's `decode_attention` at batch 1 (one query, H=12, D=64, 1024 cached tokens),
  its block arithmetic done by `triton.cdiv` (baseline: a constexpr function in recent Triton, ~2 µs a call on the
  host) or by plain integer division.

The kernels are decorated for a GPU, with the whole tuning space, so the module skips where Triton's interpreter is on.
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("the interpreter's autotuner has one config; this measures the GPU's", allow_module_level=True)

import torch  # noqa: E402
import triton  # noqa: E402
from gpt2tui.kernels import attention as A  # noqa: E402
from gpt2tui.kernels import decode as DEC  # noqa: E402

B, H, T, D = 8, 12, 1024, 64
DTYPE = torch.bfloat16
TUNED = (A._attn_fwd, A._attn_bwd_dkdv, A._attn_bwd_dq)


@pytest.fixture
def no_launch(monkeypatch):
    """Kernels that do nothing, and an autotuner whose first call picks its first config without timing any."""
    def noop(*args, **kwargs):
        return None

    for tuner in TUNED:
        monkeypatch.setattr(tuner.fn, "run", noop)
        monkeypatch.setattr(tuner, "_bench", lambda *args, **kwargs: [1.0])
    monkeypatch.setattr(A._attn_bwd_delta_kernel, "run", noop)
    monkeypatch.setattr(A, "_TUNED", {})


def _through_autotuner(tuner, grid, key, *args, **kwargs):
    tuner[grid](*args, **kwargs)


@pytest.mark.benchmark(group="attention-host-launch")
@pytest.mark.parametrize("path", ["autotuner", "cached"])
def test_launch_dkdv(benchmark, no_launch, path):
    q, k, v, do, dk, dv = (torch.empty(B, H, T, D, dtype=DTYPE) for _ in range(6))
    lse, delta = torch.empty(B * H, T), torch.empty(B * H, T)
    common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *q.stride()[:3],
              H, T, triton.next_power_of_2(T), 0.18, 0.125, 0, 0.0)
    meta = dict(D=D, DROPOUT=False, PRECISION="tf32", COMPENSATE=False)
    launch = _through_autotuner if path == "autotuner" else A._launch
    key = ("dkdv", triton.next_power_of_2(T), D, False, DTYPE)

    def grid(meta):
        return (B * H, triton.cdiv(T, meta["BLOCK_N"]))

    def call():
        launch(A._attn_bwd_dkdv, grid, key, q, k, v, do, lse, delta, dk, dv, *common, **meta)

    call()  # tunes
    benchmark.pedantic(call, rounds=200, iterations=20, warmup_rounds=5)


@pytest.mark.benchmark(group="attention-host-step")
@pytest.mark.parametrize("path", ["autotuner", "cached"])
def test_forward_backward_step(benchmark, no_launch, monkeypatch, path):
    if path == "autotuner":
        monkeypatch.setattr(A, "_launch", _through_autotuner)
    q, k, v = (torch.randn(B, H, T, D, dtype=DTYPE, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, T, D, dtype=DTYPE)

    def step():
        torch.autograd.grad(A.causal_attention(q, k, v), (q, k, v), do)

    step()  # tunes
    benchmark.pedantic(step, rounds=100, iterations=10, warmup_rounds=5)


@pytest.mark.benchmark(group="attention-host-decode")
@pytest.mark.parametrize("path", ["triton.cdiv", "int division"])
def test_decode_call(benchmark, monkeypatch, path):
    def noop(*args, **kwargs):
        return None

    monkeypatch.setattr(DEC._decode_split_kernel, "run", noop)
    monkeypatch.setattr(DEC._decode_merge_kernel, "run", noop)
    monkeypatch.setattr(DEC, "_INTERPRETED", True)  # lets CPU tensors past the device check; nothing runs anyway
    if path == "triton.cdiv":
        monkeypatch.setattr(DEC, "_cdiv", triton.cdiv)
    q = torch.randn(1, H, 1, D, dtype=DTYPE)
    k, v = (torch.randn(1, H, 1024, D, dtype=DTYPE) for _ in range(2))
    lens = torch.tensor([1024])
    benchmark.pedantic(lambda: DEC.decode_attention(q, k, v, lens, max_len=1024), rounds=200, iterations=20,
                       warmup_rounds=5)
