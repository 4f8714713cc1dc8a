"""Tokens/s, MFU and peak memory of one training step (forward, backward, AdamW) of a GPT-2, through the project's own
loop pieces: eager against `torch.compile`d, our Triton attention against SDPA, each pair in one run.

On CUDA: the 124M preset at T=1024 in bf16 autocast, B=16, 32 and 8 (that order: the most telling first, for a run
cut short), compiled and eager, Triton and SDPA; tokens/s, MFU and peak VRAM in `extra_info`. MFU counts FLOPs as
nanoGPT and llm.c do (`training.loop.flops_per_token`: 6 per non-position-embedding parameter plus 12·L·C·T, against
the GPU's dense bf16 peak).
On the CPU: a tiny model (4 layers, 128 wide, T=128, B=8), eager against compiled, float32 against bf16 autocast, and
the fused linear + cross-entropy (the training loop's loss, `kernels/cross_entropy.py`) against the plain loss over
whole logits, with each step's peak RSS measured in a fresh process.

    .venv/bin/python -m pytest benchmarks/bench_train.py --benchmark-only --benchmark-columns=min,median,mean,rounds
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2tui import GPT2, GPT2Config
from gpt2tui.training.loop import TrainConfig, flops_per_token, make_optimizer, peak_flops

CUDA = torch.cuda.is_available()


def setup(config: GPT2Config, B: int, T: int, device: torch.device):
    torch.manual_seed(0)
    model = GPT2(config).to(device).train()
    opt = make_optimizer(model, TrainConfig(max_steps=1), device)
    x = torch.randint(0, config.vocab_size, (B, T), device=device)
    return model, opt, x


def step(model, opt, x, dtype, fused=True):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        _, loss = model(x, targets=x, return_logits=not fused)  # fused: the training loop's form
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()


def record(benchmark, model, x):
    tokens = x.numel()
    benchmark.extra_info["tokens_per_step"] = tokens
    median = benchmark.stats.stats.median
    benchmark.extra_info["tokens_per_s"] = round(tokens / median, 1)
    peak = peak_flops(x.device)
    if peak:
        benchmark.extra_info["mfu"] = round(flops_per_token(model, x.shape[1]) * tokens / median / peak, 4)
    if x.is_cuda:
        benchmark.extra_info["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def compiled(model, mode: str):
    # As the training loop compiles it (`TrainConfig.compile`): the module's forward and loss; AOTAutograd traces the
    # backward, and the optimizer step stays eager (fused AdamW on CUDA).
    return torch.compile(model) if mode == "compiled" else model


CPU_CONFIG = dict(n_layers=4, n_heads=4, emb_dim=128, context_length=128, drop_rate=0.0)

# One step in a fresh process: its peak RSS above what it held before the step (VmHWM, not ru_maxrss, which Linux
# carries over fork and exec from pytest).
_PEAK = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from bench_train import CPU_CONFIG, setup, step
from gpt2tui import GPT2Config
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
model, opt, x = setup(GPT2Config(**CPU_CONFIG), B=8, T=128, device=torch.device("cpu"))
before = hwm()
step(model, opt, x, None, fused=sys.argv[2] == "fused")
print(json.dumps({"peak_rss_mb": round(hwm(), 1), "step_peak_above_start_mb": round(hwm() - before, 1)}))
"""


@pytest.mark.skipif(CUDA, reason="the CUDA benchmark below measures the real size")
@pytest.mark.parametrize("loss", ["fused", "plain"])
@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
def test_cpu_train_step(benchmark, precision, loss):
    model, opt, x = setup(GPT2Config(**CPU_CONFIG), B=8, T=128, device=torch.device("cpu"))
    dtype = torch.bfloat16 if precision == "bf16-autocast" else None
    fused = loss == "fused"
    step(model, opt, x, dtype, fused)  # warm-up: allocator, AdamW state
    benchmark.group = f"train-step-cpu-tiny-{precision}"
    benchmark.pedantic(step, args=(model, opt, x, dtype, fused), rounds=5, iterations=1)
    record(benchmark, model, x)
    if precision == "float32":
        run = subprocess.run([sys.executable, "-c", _PEAK, str(Path(__file__).parent), loss], capture_output=True,
                             text=True, check=True, timeout=600)
        benchmark.extra_info.update(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(CUDA, reason="the CUDA benchmark below measures the real size")
@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_cpu_train_step_compiled(benchmark, mode):
    torch._dynamo.reset()
    model, opt, x = setup(GPT2Config(**CPU_CONFIG), B=8, T=128, device=torch.device("cpu"))
    run = compiled(model, mode)
    for _ in range(2):  # the first compiles (forward and backward)
        step(run, opt, x, None)
    benchmark.group = "train-step-cpu-tiny-float32-compile"
    benchmark.pedantic(step, args=(run, opt, x, None), rounds=5, iterations=1)
    record(benchmark, model, x)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@pytest.mark.parametrize("mode", ["compiled", "eager"])
@pytest.mark.parametrize("B", [16, 32, 8])
def test_cuda_train_step_124m(benchmark, B, mode, backend):
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    config = GPT2Config.from_preset("gpt2", drop_rate=0.0, attn_backend=backend)
    model, opt, x = setup(config, B=B, T=1024, device=torch.device("cuda"))
    run = compiled(model, mode)
    for _ in range(3):  # the first compiles; AdamW's state and the autotuner settle
        step(run, opt, x, torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    benchmark.group = f"train-step-124m-B{B}-T1024-bf16"
    benchmark.pedantic(step, args=(run, opt, x, torch.bfloat16), rounds=10, iterations=1)
    record(benchmark, model, x)
