"""Start-up time of `gpt2tui info` and `gpt2tui models`, each beside the bare `python -c "import torch"` of the same
run, every one a fresh process: what a person waits for from Enter to the answer. The aim (issue 22): `info` within
0.3 s of importing torch, and `models` below it (it never imports torch).

    .venv/bin/python -m pytest benchmarks/bench_cli.py --benchmark-only

Run from the repository root: `python -m gpt2tui.cli` then runs this checkout.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = {
    "import-torch": ["-c", "import torch"],  # the baseline
    "info": ["-m", "gpt2tui.cli", "info", "--model", "{model}"],
    "models": ["-m", "gpt2tui.cli", "models"],
    "help": ["-m", "gpt2tui.cli", "--help"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A small saved model to describe, in a data folder of its own (so `models` lists one model)."""
    import os

    from gpt2tui import GPT2, GPT2Config, save_checkpoint

    root = tmp_path_factory.mktemp("cli")
    environment = {**os.environ, "XDG_DATA_HOME": str(root / "data"), "XDG_CONFIG_HOME": str(root / "config"),
                   "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    model = save_checkpoint(GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)),
                            root / "data" / "gpt2tui" / "models" / "tiny")
    return environment, str(model)


@pytest.mark.parametrize("case", list(COMMANDS))
def test_start_up(benchmark, env, case):
    environment, model = env
    argv = [sys.executable, *(a.format(model=model) for a in COMMANDS[case])]

    def start():
        subprocess.run(argv, env=environment, capture_output=True, check=True, timeout=120)

    benchmark.pedantic(start, rounds=7, iterations=1, warmup_rounds=1)
