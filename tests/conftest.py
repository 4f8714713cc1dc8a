"""Shared fixtures: every test runs offline, with its own data and cache folders, on models the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the user's real models, Hugging Face cache, or the network."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GPT2TUI_ATTENTION", raising=False)
    monkeypatch.delenv("GPT2TUI_MODEL", raising=False)
    return tmp_path


def hf_gpt2(seed: int = 0, **config):
    """A random-weight `transformers` GPT-2. A wide init (0.1 rather than 0.02) spreads the logits, so greedy
    decoding has no near-ties that float rounding could flip."""
    import torch
    import transformers

    torch.manual_seed(seed)
    defaults = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=50257, initializer_range=0.1)
    cfg = transformers.GPT2Config(**{**defaults, **config})
    return transformers.GPT2LMHeadModel(cfg).eval()


def write_hf_dir(path: Path, seed: int = 0, safe: bool = True, **config) -> Path:
    """A Hugging Face GPT-2 directory written by `transformers` itself (`save_pretrained`)."""
    import torch

    model = hf_gpt2(seed, **config)
    if safe:
        model.save_pretrained(path)
    else:  # the older pickle format, as `pytorch_model.bin` (transformers 5 no longer writes it itself)
        path.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


@pytest.fixture(scope="session")
def hf_small_dir(tmp_path_factory) -> Path:
    """One small HF GPT-2 directory shared by the tests that only read it."""
    return write_hf_dir(tmp_path_factory.mktemp("hf") / "tiny-gpt2", seed=1)


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
