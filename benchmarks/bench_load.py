"""Loading the 124M model: a Hugging Face float folder as float32, the same quantised to int8 while it loads, and a
saved int8 checkpoint, each in a fresh process: `load_weights`'s time (after the imports) and the process's peak RSS.

    .venv/bin/python -m pytest benchmarks/bench_load.py --benchmark-only
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LOAD = r"""
import json, sys, time
from gpt2tui.weights import load_weights
start = time.perf_counter()
load_weights(sys.argv[1], quantize=sys.argv[2] or None)
seconds = time.perf_counter() - start
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"load_s": round(seconds, 3), "peak_rss_mb": round(peak / 1024, 1)}))
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The random 124M weights as transformers writes them, and as gpt2tui saves them quantised to int8."""
    import torch
    import transformers

    from gpt2tui import load_weights, save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("load")
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(root / "hf")
    save_checkpoint(load_weights(root / "hf", quantize="int8"), root / "int8")
    return root


@pytest.mark.parametrize("case", ["hf-float32", "hf-quantised-to-int8", "saved-int8"])
def test_load(benchmark, folders, case):
    folder, quantize = {"hf-float32": ("hf", ""), "hf-quantised-to-int8": ("hf", "int8"),
                        "saved-int8": ("int8", "")}[case]
    runs = []

    def load():
        run = subprocess.run([sys.executable, "-c", _LOAD, str(folders / folder), quantize], capture_output=True,
                             text=True, check=True, timeout=600)
        runs.append(json.loads(run.stdout.strip().splitlines()[-1]))

    benchmark.group = "load-124m"
    benchmark.pedantic(load, rounds=3, iterations=1)
    best = min(runs, key=lambda r: r["load_s"])
    benchmark.extra_info.update(best)
