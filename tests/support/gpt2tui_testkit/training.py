"""Tiny models and data the training tests write for themselves."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt2tui import GPT2, GPT2Config, save_checkpoint
from gpt2tui.cli import main

# Small enough that a step takes milliseconds of model work; the 50,257-way output head dominates the cost.
TINY = dict(n_layers=2, n_heads=2, emb_dim=32, context_length=64, drop_rate=0.0)
SIZE_FLAGS = ["--n-layers", "2", "--n-heads", "2", "--emb-dim", "32"]

STORY = (
    "The lighthouse keeper counted the ships every evening. Seven ships sailed north, and three came back. "
    "His daughter painted the rocks blue so the sailors would remember the harbour. "
    "When the fog rolled in, the keeper rang the brass bell twelve times and waited for an answer.\n"
)


def write_story(path: Path, repeat: int = 3) -> Path:
    path.write_text(STORY * repeat, encoding="utf-8")
    return path


def tiny_model_dir(path: Path, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(GPT2(GPT2Config(**{**TINY, **overrides})), path)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def pretrain_argv(data: Path, out: Path, *extra) -> list:
    return ["pretrain", "--data", data, "--out", out, *SIZE_FLAGS, "--context-length", "32", "--batch-size", "4",
            "--sample-tokens", "0", "--eval-every", "0", *extra]


def dpo_argv(data, base, out, *extra) -> list:
    """`gpt2tui dpo` on a tiny run; options in `extra` come last and so win over these."""
    return ["dpo", "--data", data, "--base", base, "--out", out, "--lr", "3e-3", "--batch-size", "4",
            "--warmup-steps", "0", "--eval-every", "2", "--max-new-tokens", "2", *extra]


# Instruction records: each name has its own one-word answer, so a model that answers them has learned them.
ANSWERS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "granite", "harbor", "indigo", "jasper",
           "kelp", "lagoon", "meadow", "nectar", "onyx", "pebble", "quartz", "river", "saffron", "tundra",
           "umber", "violet", "willow", "yarrow"]


def instruction_records() -> list[dict]:
    return [{"instruction": f"Name the stone of clan {i}.", "input": "", "output": word}
            for i, word in enumerate(ANSWERS)]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
