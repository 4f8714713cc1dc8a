"""Where a forward+backward step of the Triton attention spends its GPU time (torch.profiler), and the block sizes
the autotuner chose.

    python3 benchmarks/profile_attention.py
"""

import torch
from torch.profiler import ProfilerActivity, profile

from gpt2tui.kernels import attention as A
from gpt2tui.kernels.library import causal_attention

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
        print(name, getattr(getattr(A, name), "best_config", "not tuned (one config, or not run)"))

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))


if __name__ == "__main__":
    main()
