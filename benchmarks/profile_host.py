"""How long the host takes to issue an attention step on a GPU machine, piece by piece, Triton beside SDPA.

    python3 benchmarks/profile_host.py

`do_bench` times a step on the GPU, but when the host issues kernels more slowly than the GPU runs them the GPU waits,
and the figure measures the host. Here each workload runs N times back to back with no synchronisation: the time until
the last call returns is the host's issue time per call (the GPU queue is deep enough not to block); the time until
the GPU is done as well is the step's time. A workload whose issue time is near its step time is host-bound. The
pieces (one empty launch each way, an allocation, autograd's round trip through a do-nothing Function) say where the
host time of a Triton step goes on this machine.
"""

import time

import torch
import triton
from torch.profiler import ProfilerActivity, profile

from gpt2tui.kernels import attention as A
from gpt2tui.kernels import native
from gpt2tui.kernels.attention import causal_attention
from gpt2tui.kernels.launch import Launcher
from gpt2tui.kernels.sdpa import causal_attention_sdpa

B, H, T, D = 8, 12, 1024, 64
N = 200
DEVICE = "cuda"


@triton.jit
def _empty_kernel(X, n):
    pass


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g


def issue_and_step_us(fn) -> tuple[float, float]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(N):
        fn()
    issued = time.perf_counter()
    torch.cuda.synchronize()
    done = time.perf_counter()
    return (issued - start) / N * 1e6, (done - start) / N * 1e6


def timeline(fn) -> list[str]:
    """When, within one lone step, the host starts each kernel launch and the GPU starts and ends each kernel (µs from
    the step's first recorded event; the profiler's own overhead stretches the host side). In a host-bound step the
    GPU waits for the first backward launch: this shows how long into the step it comes."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    if not events:
        return ["(no events recorded)"]
    t0 = events[0].time_range.start
    lines = []
    for e in events:
        on_gpu = e.device_type != events[0].device_type
        if on_gpu or "aunchKernel" in e.name:
            where = "GPU kernel" if on_gpu else "host launch"
            end = f"..{e.time_range.end - t0:7.1f}" if on_gpu else ""
            lines.append(f"  {where:11} {e.time_range.start - t0:7.1f}{end}  {e.name[:60]}")
    return lines


def main() -> None:
    q, k, v = [torch.randn(B, H, T, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    do = torch.randn_like(q)
    x = torch.zeros(16, device=DEVICE, requires_grad=True)
    launcher = Launcher(_empty_kernel)
    if DEVICE == "cuda" and native.wanted() and native.load(timeout=600) is None:
        print(f"the C++ attention node did not build: {native.failure}")
    python = lambda: A._apply_directly(q, k, v, 0.0, 0.125, 0)  # noqa: E731  the Python Function, never the node
    out = python()
    ctx = out.grad_fn  # a custom Function's grad_fn is its ctx
    def without_plans():
        keep, A._keep_plan = A._keep_plan, lambda *args: None
        saved = dict(A._PLANS)
        A._PLANS.clear()
        try:
            torch.autograd.grad(python(), (q, k, v), do)
        finally:
            A._keep_plan = keep
            A._PLANS.update(saved)

    workloads = {
        "triton forward+backward (autograd.grad; the C++ node once warm)": lambda: torch.autograd.grad(
            causal_attention(q, k, v), (q, k, v), do
        ),
        "triton forward+backward, Python Function (autograd.grad)": lambda: torch.autograd.grad(python(), (q, k, v), do),
        "triton forward+backward, Python Function, no launch plans (and the swap's ~1 µs)": without_plans,
        "sdpa forward+backward (autograd.grad)": lambda: torch.autograd.grad(
            causal_attention_sdpa(q, k, v), (q, k, v), do
        ),
        "triton forward (no_grad)": lambda: A._forward(q.detach(), k.detach(), v.detach(), 0.125, 0.0, 0),
        "triton backward, called directly": lambda: A.FlashAttentionFunction.backward(ctx, do),
        "empty Triton kernel, Launcher": lambda: launcher((1,), x, 16),
        "empty Triton kernel, JITFunction.run": lambda: _empty_kernel[(1,)](x, 16),
        "torch x.add_(1) (one aten launch)": lambda: x.data.add_(1),
        "torch.empty (B,T,H,D) bf16": lambda: torch.empty(B, T, H, D, device=DEVICE, dtype=torch.bfloat16),
        "autograd.grad through a do-nothing Function": lambda: torch.autograd.grad(_Identity.apply(x), x, x),
        # The same round trip through a C++ node: what the Function's Python adds, beyond autograd's own handoff.
        "autograd.grad through a view (C++ node)": lambda: torch.autograd.grad(x.view_as(x), x, x),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}; {N} calls each")
    print("workload | host issue µs/call | step µs/call")
    for name, fn in workloads.items():
        issue, step = issue_and_step_us(fn)
        print(f"{name} | {issue:.1f} | {step:.1f}", flush=True)
    for name in ("triton forward+backward (autograd.grad; the C++ node once warm)",
                 "triton forward+backward, Python Function (autograd.grad)", "sdpa forward+backward (autograd.grad)"):
        print(f"timeline of one step, {name}:")
        print("\n".join(timeline(workloads[name])), flush=True)


if __name__ == "__main__":
    main()
