"""Hugging Face GPT-2 folders written by `transformers` itself, on random weights: the real loading code's input."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers


def hf_gpt2(seed: int = 0, **config):
    """A random-weight `transformers` GPT-2. A wide init (0.1 rather than 0.02) spreads the logits, so greedy
    decoding has no near-ties that float rounding could flip."""
    torch.manual_seed(seed)
    defaults = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=50257, initializer_range=0.1)
    cfg = transformers.GPT2Config(**{**defaults, **config})
    return transformers.GPT2LMHeadModel(cfg).eval()

def write_hf_dir(path: Path, seed: int = 0, safe: bool = True, **config) -> Path:
    """A Hugging Face GPT-2 directory written by `transformers` itself (`save_pretrained`)."""
    model = hf_gpt2(seed, **config)
    if safe:
        model.save_pretrained(path)
    else:  # the older pickle format, as `pytorch_model.bin` (transformers 5 no longer writes it itself)
        path.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path

def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
