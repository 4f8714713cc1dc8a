"""Where a forward+backward step of the Triton attention spends its time, on a GPU: kernel time (torch.profiler) and
host time (cProfile of the Python between launches). RESULTS.md's third attention run came from the first half.

    python3 benchmarks/profile_attention.py            # kernels, then the 25 costliest host functions
"""

import cProfile
import pstats

import torch
from torch.profiler import ProfilerActivity, profile

from gpt2tui.kernels import attention as A
from gpt2tui.kernels.attention import causal_attention

B, H, T, D = 8, 12, 1024, 64


def main() -> None:
    q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    do = torch.randn_like(q)

    def step():
        torch.autograd.grad(causal_attention(q, k, v), (q, k, v), do)

    for _ in range(3):  # the first call tunes
        step()
    torch.cuda.synchronize()
    for name in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"):
        print(name, getattr(A, name).best_config)

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))

    # The backward runs on autograd's device thread, which cProfile of this thread does not see; so the host side is
    # also profiled with the backward called directly, as autograd would.
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(50):
        step()
        out = causal_attention(q, k, v)
        A.FlashAttentionFunction.backward(out.grad_fn, do)  # a custom Function's grad_fn is its ctx
    torch.cuda.synchronize()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
