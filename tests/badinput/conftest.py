"""The bad-input suite: hundreds of generated broken inputs, each answered with one line on stderr, the documented
exit code, no traceback, and every existing file left as it was. Its helpers and case tables live in
gpt2tui_testkit.badinput.

Most cases run in-process through the CLI's `main(argv)`; `test_subprocesses.py` runs a few dozen as real
processes. A hang guard (SIGALRM, generous) turns a hang into a failure instead of a stuck suite: it asserts no time.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, save_checkpoint
from gpt2tui_testkit.hf import write_hf_dir

HANG_GUARD_S = 120


@pytest.fixture(autouse=True)
def hang_guard():
    def hung(signum, frame):
        raise AssertionError(f"no answer in {HANG_GUARD_S} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_GUARD_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def tiny_ours(tmp_path_factory) -> Path:
    """A gpt2tui checkpoint small enough to copy for every case (a 256-token vocabulary: `info` only)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "ours"
    save_checkpoint(GPT2(GPT2Config(vocab_size=256, context_length=16, emb_dim=8, n_heads=2, n_layers=1)), path)
    return path


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> Path:
    """A gpt2tui checkpoint with GPT-2's vocabulary, for the cases that generate text."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "text"
    save_checkpoint(GPT2(GPT2Config(context_length=32, emb_dim=16, n_heads=2, n_layers=1)), path)
    return path


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    return write_hf_dir(tmp_path_factory.mktemp("models") / "hf", seed=1, n_embd=8, n_layer=1, n_head=2,
                        n_positions=16, vocab_size=256)
