"""The `pretrain`, `finetune` and `evaluate` subcommands of `gpt2tui`.

`add_commands(subparsers)` registers them; each parser's `run` default is its handler, which returns an exit code.
Nothing here imports torch: `gpt2tui --help` stays fast, and bad flags are answered before any model loads.
"""

from __future__ import annotations

import argparse
import math

from gpt2tui.argtypes import float_in, int_at_least, positive_float
from gpt2tui.argtypes import seed as seed_type

from .presets import PRESET_NAMES

FRACTION = float_in(0.0, 1.0, high_open=True)


def _run_pretrain(args) -> int:
    from .pretrain import run  # deferred: imports torch, once the flags are known to be good

    return run(args)


def _run_finetune(args) -> int:
    from .finetune import run  # deferred: imports torch, once the flags are known to be good

    return run(args)


def _run_evaluate(args) -> int:
    from .evaluate import run  # deferred: imports torch, once the flags are known to be good

    return run(args)


def _add_loop_args(p: argparse.ArgumentParser, batch: int, lr: float | None, eval_every: int | None,
                   save_every: int, seed: int) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int_at_least(1), default=batch, metavar="N",
                   help=f"sequences per micro-batch on each process (default {batch})")
    g.add_argument("--grad-accum", type=int_at_least(1), default=1, metavar="N",
                   help="micro-batches per optimizer step (default 1)")
    g.add_argument("--lr", type=positive_float, default=lr, metavar="X",
                   help="peak learning rate after warm-up; cosine decay to 10%% of it" + (f" (default {lr})" if lr else ""))
    g.add_argument("--warmup-steps", type=int_at_least(0), default=None, metavar="N",
                   help="linear warm-up steps (default: 10%% of the steps, at most 100)")
    g.add_argument("--weight-decay", type=float_in(0.0, math.inf, high_open=True), default=0.1, metavar="X",
                   help="AdamW decay on matrices (default 0.1)")
    g.add_argument("--dropout", type=FRACTION, default=None, metavar="P",
                   help="dropout rate for this run (default: the model config's)")
    g.add_argument("--seed", type=seed_type, default=seed, metavar="N",
                   help=f"seed for initialisation, data order, split and dropout (default {seed})")
    g = p.add_argument_group("schedule and outputs")
    g.add_argument("--eval-every", type=int_at_least(0), default=eval_every, metavar="N",
                   help="validation loss every N steps, and at the end; 0: never" +
                   (f" (default {eval_every})" if eval_every else " (default: 4 times per epoch)"))
    g.add_argument("--eval-batches", type=int_at_least(1), default=20, metavar="N",
                   help="validation batches per evaluation (default 20)")
    g.add_argument("--save-every", type=int_at_least(0), default=save_every, metavar="N",
                   help=f"checkpoint every N steps (always at the end and on Ctrl+C; default {save_every})")
    g.add_argument("--sample-every", type=int_at_least(0), default=0, metavar="N",
                   help="print a sample generation every N steps (default: only at the end)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in the output's checkpoint exactly")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if present; torchrun sets the GPU)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="autocast precision (default auto: bfloat16 on CUDA, float16 + grad scaler where bf16 is "
                        "missing, float32 on the CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    g.add_argument("--pad-vocab", action="store_true",
                   help="train with the vocabulary padded to a multiple of 64 (50,257 -> 50,304: evenly tiled GPU "
                        "products); the saved model keeps its own vocabulary")
    g.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute activations in the backward pass: less memory, ~30%% more compute")


def add_commands(sub) -> None:
    """Register `pretrain`, `finetune` and `evaluate` on a `add_subparsers()` object."""
    p = sub.add_parser(
        "pretrain", help="train a GPT-2 on text files (from scratch or continued)",
        description="Train a GPT-2 on text: files, folders (their .txt/.md files) or globs are tokenised once into "
                    "memory-mapped token shards. Run under `torchrun --nproc_per_node=N` for several GPUs (or CPU "
                    "processes with gloo). OUT receives checkpoint/, metrics.jsonl and samples.txt.",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="PATH", help="text files, folders or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoint, metrics.jsonl, tokens)")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="model size: tiny (~7M), mini (~30M), or an official GPT-2 size (default gpt2, 124M)")
    g.add_argument("--n-layers", type=int_at_least(1), default=None, metavar="N", help="custom number of blocks")
    g.add_argument("--n-heads", type=int_at_least(1), default=None, metavar="N", help="custom attention heads")
    g.add_argument("--emb-dim", type=int_at_least(1), default=None, metavar="N", help="custom embedding width")
    g.add_argument("--context-length", type=int_at_least(2), default=None, metavar="N",
                   help="tokens per training sequence (default: the model's context length)")
    g.add_argument("--init", default=None, metavar="MODEL",
                   help="continue from weights: a model directory, a saved name, or an official name (gpt2, ...)")
    g = p.add_argument_group("data")
    g.add_argument("--val-fraction", type=FRACTION, default=0.1, metavar="F",
                   help="share of the tokens (at the end) held out for validation (default 0.1)")
    g.add_argument("--tokens-dir", default=None, metavar="DIR", help="where token shards live (default OUT/tokens)")
    p.add_argument("--max-steps", type=int_at_least(1), default=1000, metavar="N", help="optimizer steps (default 1000)")
    _add_loop_args(p, batch=8, lr=6e-4, eval_every=100, save_every=500, seed=1337)
    p.add_argument("--sample-prompt", default=None, metavar="TEXT", help="prompt for samples (default: validation text)")
    p.add_argument("--sample-tokens", type=int_at_least(0), default=50, metavar="N",
                   help="tokens per sample generation; 0: no samples (default 50)")
    p.set_defaults(run=_run_pretrain)

    p = sub.add_parser(
        "finetune", help="instruction-tune a model into a chatbot (full or LoRA)",
        description="Fine-tune on instruction data: a JSON list or JSON lines of {instruction, input, output} or "
                    "{messages: [{role, content}, ...]} records, rendered with the Alpaca template the chat uses, "
                    "split 85/5/10 into train/val/test (seeded). Saves a chat-ready model (`gpt2tui --model NAME`) "
                    "and the test set's generated responses as JSON.",
    )
    p.add_argument("--data", required=True, metavar="FILE", help="instruction data (.json or .jsonl)")
    p.add_argument("--base", required=True, metavar="MODEL", help="model to start from: directory, saved name or official name")
    p.add_argument("--out", required=True, metavar="NAME_OR_DIR",
                   help="a name (saved in the gpt2tui models folder) or a directory path for the fine-tuned model")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="checkpoint, metrics.jsonl and test responses (default: the gpt2tui data folder's runs/NAME)")
    p.add_argument("--epochs", type=positive_float, default=2.0, metavar="N", help="passes over the training split (default 2)")
    p.add_argument("--mask-prompt", action="store_true", help="learn only the responses (prompt tokens get no loss)")
    p.add_argument("--context-length", type=int_at_least(2), default=None, metavar="N",
                   help="longest example in tokens; longer ones are cut (default: the model's context length)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", action="store_true", help="train low-rank adapters only, base weights frozen")
    g.add_argument("--lora-rank", type=int_at_least(1), default=8, metavar="R", help="adapter rank (default 8)")
    g.add_argument("--lora-alpha", type=positive_float, default=16.0, metavar="A", help="adapter scale alpha (default 16)")
    g.add_argument("--lora-dropout", type=FRACTION, default=0.05, metavar="P", help="dropout on adapter inputs (default 0.05)")
    g.add_argument("--lora-targets", default="c_attn,c_proj,c_fc", metavar="NAMES",
                   help="comma-separated Linear layers to adapt (default c_attn,c_proj,c_fc)")
    g.add_argument("--merge", action="store_true",
                   help="fold the adapters into the weights and save a plain checkpoint (chat needs this for LoRA)")
    _add_loop_args(p, batch=8, lr=None, eval_every=None, save_every=200, seed=123)
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=256, metavar="N",
                   help="longest generated test response (default 256)")
    p.add_argument("--test-responses", type=int_at_least(0), default=None, metavar="N",
                   help="generate responses for the first N test examples (default: all)")
    p.set_defaults(run=_run_finetune)

    p = sub.add_parser(
        "evaluate", help="loss, perplexity and accuracy of a model on data, with plots",
        description="Evaluate a model on text or instruction data: loss, perplexity and next-token accuracy (on "
                    "response tokens for instruction data) for the train/val/test splits, as a table and JSON, plus "
                    "loss-plot.pdf/.png, accuracy-plot.pdf and sample_generations.txt in the output folder.",
    )
    p.add_argument("--model", "-m", required=True, metavar="MODEL", help="a model directory, saved name, official name, or LoRA adapter")
    p.add_argument("--data", required=True, nargs="+", metavar="FILE",
                   help="instruction data (.json/.jsonl) or text files, folders or globs")
    p.add_argument("--out", default="outputs", metavar="DIR", help="where results and plots go (default ./outputs)")
    p.add_argument("--metrics", default=None, metavar="FILE",
                   help="a run's metrics.jsonl for the loss curves (default: found beside the model)")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="N", help="sequences per batch (default 8)")
    p.add_argument("--max-batches", type=int_at_least(1), default=50, metavar="N", help="batches per split at most (default 50)")
    p.add_argument("--context-length", type=int_at_least(2), default=None, metavar="N",
                   help="tokens per sequence (default: the model's context length)")
    p.add_argument("--val-fraction", type=FRACTION, default=0.1, metavar="F", help="text data's validation share (default 0.1)")
    p.add_argument("--seed", type=int, default=123, metavar="N", help="the split's seed: the one fine-tuning used (default 123)")
    p.add_argument("--samples", type=int_at_least(0), default=5, metavar="N", help="sample generations to write (default 5)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=100, metavar="N", help="tokens per sample (default 100)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--quantize", choices=["int8", "bfloat16"], default=None,
                   help="evaluate the model with its weights packed to int8 or bfloat16, as `generate --quantize` runs it")
    p.set_defaults(run=_run_evaluate)
