"""The host's share of the Triton attention: the Python around and inside each kernel launch, timed on the CPU.

    .venv/bin/python -m pytest benchmarks/bench_attention_host.py --benchmark-only

On a GPU a forward+backward step at GPT-2's shape waited for the host (RESULTS.md at 5551116, attention, third run),
so every microsecond of Python between launches counts, and it can be timed anywhere: a stand-in driver
(`tests/support/gpt2tui_testkit/standin_driver.py`) has the kernels really compiled for sm_90 and records their
launches instead of making them, so all of Triton's host path runs, up to its C launcher. The autotuner's timing of candidates is replaced
by a constant. Each group puts the fast path beside its baselines:

- ``attention-host-launch``: one launch of the dK/dV kernel: through `Autotuner.run` (which rebuilds a dict of every
  argument on each call), through `JITFunction.run` with the tuned config, or through `launch.Launcher`, which
  launches the compiled specialization directly (ours);
- ``attention-host-step``: a whole forward+backward at GPT-2 124M's shape (B=8, H=12, T=1024, D=64, bfloat16) through
  `causal_attention` and autograd, with the same three paths for its three launches. q, k, v are the model's head
  views of one projection, on the meta
  device: allocations cost what a caching allocator's do, not a size-dependent CPU malloc, and autograd runs the
  backward on a worker thread, as it does for CUDA tensors (where creating a tensor costs more than on the caller's);
- ``attention-host-decode``: one layer's `decode_attention` at batch 1 (one query, 1024 cached tokens, 8 splits, two
  launches): block arithmetic by `triton.cdiv` (a constexpr function in recent Triton, ~2 µs a call on the host) and
  launches by `JITFunction.run`, plain integer division with `JITFunction.run`, or integer division and `Launcher`,
  whose launch plan (`decode._PLANS`) binds the call's launches from its first call on.

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
LAUNCHERS = (*A._LAUNCHERS.values(), DEC._launch_split, DEC._launch_merge)
PATHS = ["Autotuner.run", "JITFunction.run", "Launcher"]


@pytest.fixture
def stand_in(monkeypatch):
    """Triton's host path for real, against a driver that compiles for sm_90 and launches nothing."""
    from gpt2tui_testkit.standin_driver import RecordingLauncher, install, uninstall

    previous = install()
    monkeypatch.setattr(RecordingLauncher, "__call__", lambda self, *args: None)  # keep nothing: time only
    for tuner in TUNED:
        monkeypatch.setattr(tuner, "_bench", lambda *args, **kwargs: [1.0])
    monkeypatch.setattr(A, "_TUNED", {})
    monkeypatch.setattr(A, "_PLANS", {})
    monkeypatch.setattr(DEC, "_PLANS", {})
    for launcher in LAUNCHERS:
        monkeypatch.setattr(launcher, "compiled", {})
    yield
    uninstall(previous)


def _take(monkeypatch, path):
    """Route every launch the way `path` names."""
    if path == "Autotuner.run":

        def through_autotuner(tuner, grid, key, *args, bind=False, **kwargs):
            tuner[grid](*args, **kwargs)  # and nothing bound to hand back: no launch plans either

        monkeypatch.setattr(A, "_launch", through_autotuner)
    if path != "Launcher":
        for launcher in LAUNCHERS:
            monkeypatch.setattr(launcher, "direct", False)


@pytest.mark.benchmark(group="attention-host-launch")
@pytest.mark.parametrize("path", PATHS)
def test_launch_dkdv(benchmark, stand_in, monkeypatch, path):
    _take(monkeypatch, path)
    q, k, v, do, dk, dv = (torch.empty(B, H, T, D, dtype=DTYPE) for _ in range(6))
    stats = A._stats(B, H, T, "cpu")
    common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *q.stride()[:3],
              H, T, T, A._delta_at(B * H * T), 0.18, 0.125, 0, 0.0)
    meta = dict(D=D, DROPOUT=False, PRECISION="tf32", COMPENSATE=False)
    key = ("dkdv", T, D, False, DTYPE)

    def grid(meta):
        return (B * H, -(-T // meta["BLOCK_N"]))

    def call():
        A._launch(A._attn_bwd_dkdv, grid, key, q, k, v, do, stats, dk, dv, *common, **meta)

    call()  # tunes and compiles
    call()  # the direct launcher's first sight of the specialization
    benchmark.pedantic(call, rounds=200, iterations=20, warmup_rounds=5)


@pytest.mark.benchmark(group="attention-host-step")
@pytest.mark.parametrize("path", PATHS)
def test_forward_backward_step(benchmark, stand_in, monkeypatch, path):
    _take(monkeypatch, path)
    qkv = torch.empty(B, T, 3 * H * D, dtype=DTYPE, device="meta", requires_grad=True)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
    do = torch.empty(B, H, T, D, dtype=DTYPE, device="meta")

    def step():
        torch.autograd.grad(A.causal_attention(q, k, v), (q, k, v), do)

    step()
    step()
    benchmark.pedantic(step, rounds=100, iterations=10, warmup_rounds=5)


@pytest.mark.benchmark(group="attention-host-decode")
@pytest.mark.parametrize("path", ["triton.cdiv", "int division", "int division + Launcher"])
def test_decode_call(benchmark, stand_in, monkeypatch, path):
    monkeypatch.setattr(DEC, "_INTERPRETED", True)  # lets CPU tensors past the device check; nothing runs anyway
    monkeypatch.setattr(DEC, "_device_sms", lambda device: 132)  # an H100/H200: 1024 keys in 8 splits
    if path == "triton.cdiv":
        monkeypatch.setattr(DEC, "_cdiv", triton.cdiv)
    if path != "int division + Launcher":
        _take(monkeypatch, "JITFunction.run")
    q = torch.randn(1, H, 1, D, dtype=DTYPE)
    k, v = (torch.randn(1, H, 1024, D, dtype=DTYPE) for _ in range(2))
    lens = torch.tensor([1024])

    def call():
        DEC.decode_attention(q, k, v, lens, max_len=1024)

    call()
    call()
    benchmark.pedantic(call, rounds=200, iterations=20, warmup_rounds=5)
