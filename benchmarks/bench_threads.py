"""Decode speed on the CPU when other processes use the cores: the default (the thread governor, gpt2tui/threads.py,
which runs on the cores others leave free) against one thread and against all threads fixed, idle and with one core
busy, for float32 and int8 weights.

Each case is a fresh Python that decodes greedily with the 124M shape on random weights and reports tokens/s; the load
is busy-looping processes, one per core named. The figure is in each row's `extra_info` (tokens_per_s), with its peak
RSS (peak_rss_mb). The default must never be slower than one thread (issue 20).

    .venv/bin/python -m pytest benchmarks/bench_threads.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

NEW_TOKENS = 48

_DECODE = r"""
import json, sys, time
import torch
from gpt2tui import GPT2, GPT2Config, SamplingParams
from gpt2tui.generate import Decoder
from gpt2tui.quant import quantize_model
torch.manual_seed(0)
model = GPT2(GPT2Config()).eval()
if sys.argv[2] != "float32":
    quantize_model(model, sys.argv[2])
prompt = list(range(100, 132))
params = SamplingParams(max_new_tokens=int(sys.argv[1]), temperature=0.0, stop_at_eos=False)
with torch.no_grad():
    list(Decoder(model, [prompt], SamplingParams(max_new_tokens=4, temperature=0.0)))  # warm up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        n = sum(1 for _ in Decoder(model, [prompt], params))
        best = max(best, n / (time.perf_counter() - start))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so it could be pytest's own peak.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"tokens_per_s": round(best, 2), "peak_rss_mb": round(peak / 1024, 1)}))
"""


def _decode(threads: str | None, weights: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GPT2TUI_THREADS", "OMP_NUM_THREADS")}
    if threads is not None:
        env["GPT2TUI_THREADS"] = threads
    run = subprocess.run([sys.executable, "-c", _DECODE, str(NEW_TOKENS), weights], capture_output=True, text=True,
                         env=env, timeout=900, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(params=[0, 1], ids=["idle", "one-core-busy"])
def load(request):
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(request.param)]
    yield request.param
    for p in spinners:
        p.kill()
        p.wait()


@pytest.mark.parametrize("weights", ["float32", "int8"])
@pytest.mark.parametrize("threads", ["1", str(os.cpu_count() or 1), None],
                         ids=["1-thread", "all-threads-fixed", "default-governed"])
def test_decode_under_load(benchmark, load, threads, weights):
    result = {}

    def run():
        result.update(_decode(threads, weights))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result, load=load, threads=threads or "governed", weights=weights)
