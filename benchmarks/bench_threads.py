"""Decode speed on the CPU when other processes use the cores: torch's default OpenMP waiting (threads spin) beside
the passive waiting gpt2tui sets (gpt2tui/__init__.py), on two threads, against one thread, idle and under load.

Each case is a fresh Python (libgomp reads OMP_WAIT_POLICY once, when torch loads it) that decodes greedily with the
124M shape on random weights and reports tokens/s; the load is busy-looping processes, one per core named. The figure
is in each row's `extra_info` (tokens_per_s), and its peak RSS (peak_rss_mb).

    .venv/bin/python -m pytest benchmarks/bench_threads.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

NEW_TOKENS = 32

_DECODE = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from gpt2tui import GPT2, GPT2Config, SamplingParams
from gpt2tui.generate import Decoder
torch.manual_seed(0)
model = GPT2(GPT2Config()).eval()
prompt = list(range(100, 132))
params = SamplingParams(max_new_tokens=int(sys.argv[2]), temperature=0.0)
with torch.no_grad():
    list(Decoder(model, [prompt], SamplingParams(max_new_tokens=4, temperature=0.0)))  # warm up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        n = sum(1 for _ in Decoder(model, [prompt], params))
        best = max(best, n / (time.perf_counter() - start))
print(json.dumps({"tokens_per_s": round(best, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def _decode(threads: int, policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    # torch's default: torch imported before gpt2tui, as a program that never heard of the setting would.
    code = ("import torch\n" if policy is None else "") + _DECODE
    run = subprocess.run([sys.executable, "-c", code, str(threads), str(NEW_TOKENS)], capture_output=True, text=True,
                         env=env, timeout=600, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(params=[0, 1], ids=["idle", "one-core-busy"])
def load(request):
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(request.param)]
    yield request.param
    for p in spinners:
        p.kill()
        p.wait()


@pytest.mark.parametrize("threads, policy", [(1, "PASSIVE"), (2, None), (2, "PASSIVE")],
                         ids=["1-thread", "2-threads-default-spin", "2-threads-passive"])
def test_decode_under_load(benchmark, load, threads, policy):
    result = {}

    def run():
        result.update(_decode(threads, policy))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result, load=load, threads=threads, policy=policy or "torch default (active)")
