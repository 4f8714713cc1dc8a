"""Kernel-only CUDA time of one forward+backward step of the Triton attention (torch.profiler), to tell GPU time
from host overhead. Run on a GPU: python3 benchmarks/profile_attention.py"""
import torch
from torch.profiler import profile, ProfilerActivity
from gpt2tui.kernels.attention import causal_attention
from gpt2tui.kernels import attention as A
B, H, T, D = 8, 12, 1024, 64
q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
do = torch.randn_like(q)
for _ in range(3):
    torch.autograd.grad(causal_attention(q, k, v), (q, k, v), do)
torch.cuda.synchronize()
for n in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"):
    print(n, getattr(A, n).best_config)
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        torch.autograd.grad(causal_attention(q, k, v), (q, k, v), do)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
