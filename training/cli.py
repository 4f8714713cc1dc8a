"""The `pretrain`, `finetune`, `dpo` and `evaluate` subcommands of `gpt2tui`.

`add_commands(subparsers)` registers them; each parser's `run` default is its handler, which returns an exit code.
Nothing here imports torch: `gpt2tui --help` stays fast, and bad flags are answered before any model loads.
"""

from __future__ import annotations

import argparse
import math

from gpt2tui.argtypes import float_in, int_at_least, positive_float
from gpt2tui.argtypes import seed as seed_type
from gpt2tui.errors import DataError

from .presets import PRESET_NAMES

# The benchmark names, spelled out so that `--help` and bad flags need no torch (gpt2tui.evals.tasks.TASKS).
TASKS = ("hellaswag", "lambada", "wikitext-2", "wikitext-103")

FRACTION = float_in(0.0, 1.0, high_open=True)


def _run_pretrain(args) -> int:
    from .pretrain import run  # deferred: imports torch, once the flags are known to be good

    return run(args)


def _run_finetune(args) -> int:
    from .finetune import run  # deferred: imports torch, once the flags are known to be good

    return run(args)


def _run_dpo(args) -> int:
    from .dpo import run  # deferred: imports torch, once the flags are known to be good

    return run(args)


def _run_evaluate(args) -> int:
    if args.task or args.harness:
        # deferred: imports torch, once the flags are known to be good
        from .evaluate_tasks import run as run_tasks

        return run_tasks(args)
    if not args.data:
        raise DataError("evaluate needs --data FILE (instruction data or text), or --task TASK for a standard "
                        "benchmark (hellaswag, lambada, wikitext-2, wikitext-103)")
    from .evaluate import run  # deferred: imports torch, once the flags are known to be good

    return run(args)


def _add_loop_args(p: argparse.ArgumentParser, batch: int, lr: float | None, eval_every: int | None,
                   save_every: int, seed: int, dropout: str = "the model config's") -> None:
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
                   help=f"dropout rate for this run (default: {dropout})")
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
    """Register `pretrain`, `finetune`, `dpo` and `evaluate` on a `add_subparsers()` object."""
    p = sub.add_parser(
        "pretrain", help="train a GPT-2 on text files (from scratch or continued)",
        description="Train a GPT-2 on text: files, folders or globs of text (.txt, .md), JSON lines (.jsonl, .json: "
                    "a `text` field per record), Parquet (a `text` column), any of those as .gz or .zst, and "
                    "Hugging Face datasets (hf:NAME, streamed) are tokenised once, streaming, into memory-mapped "
                    "token shards; an interrupted tokenisation carries on where it stopped. Run under `torchrun --nproc_per_node=N` for several GPUs (or CPU "
                    "processes with gloo). OUT receives checkpoint/, metrics.jsonl and samples.txt.",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="data files, folders or globs, and hf:NAME datasets (e.g. hf:HuggingFaceFW/fineweb-edu)")
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
    g.add_argument("--text-field", default="text", metavar="NAME",
                   help="the field (JSON) or column (Parquet, hf:) holding each document's text (default text)")
    g.add_argument("--data-config", default=None, metavar="NAME",
                   help="the configuration of an hf: dataset, e.g. sample-10BT for fineweb-edu")
    g.add_argument("--data-split", default="train", metavar="NAME", help="the split of an hf: dataset (default train)")
    g.add_argument("--strict", action="store_true",
                   help="refuse the data at its first bad record (not UTF-8, malformed, no text field) instead of "
                        "skipping bad records and naming the first few")
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
    p.add_argument("--data", required=True, metavar="FILE",
                   help="instruction data: a .json or .jsonl file, or hf:NAME, a Hugging Face dataset in the same "
                        "forms (e.g. hf:tatsu-lab/alpaca)")
    p.add_argument("--data-config", default=None, metavar="NAME", help="the configuration of an hf: dataset")
    p.add_argument("--data-split", default="train", metavar="NAME",
                   help="the split of an hf: dataset (default train; it is split 85/5/10 again)")
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
                   help="fold the adapters into the weights and save a standalone checkpoint (without it, only the "
                        "adapter is saved: the chat, generate and evaluate load it over its base)")
    _add_loop_args(p, batch=8, lr=None, eval_every=None, save_every=200, seed=123)
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=256, metavar="N",
                   help="longest generated test response (default 256)")
    p.add_argument("--test-responses", type=int_at_least(0), default=None, metavar="N",
                   help="generate responses for the first N test examples (default: all)")
    p.set_defaults(run=_run_finetune)

    p = sub.add_parser(
        "dpo", help="preference-tune a fine-tuned model (DPO) to prefer the better of two replies",
        description="Direct Preference Optimization on preference data: a JSON list or JSON lines of {instruction, "
                    "input, chosen, rejected} or {messages, chosen, rejected} records, rendered with the base "
                    "model's own chat template, split 85/5/10 (seeded) like finetune. Only the replies are scored; "
                    "the reference (the base model) scores each pair once, before training. Logs the DPO loss, "
                    "rewards, their margin and the preference accuracy per step and evaluation.",
    )
    p.add_argument("--data", required=True, metavar="FILE", help="preference data (.json or .jsonl)")
    p.add_argument("--base", required=True, metavar="MODEL",
                   help="the fine-tuned model to start from, and the reference: directory, saved name or official name")
    p.add_argument("--out", required=True, metavar="NAME_OR_DIR",
                   help="a name (saved in the gpt2tui models folder) or a directory path for the tuned model")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="checkpoint and metrics.jsonl (default: the gpt2tui data folder's runs/NAME)")
    p.add_argument("--beta", type=positive_float, default=0.1, metavar="X",
                   help="how far the model may move from the reference: the rewards' scale (default 0.1)")
    p.add_argument("--epochs", type=positive_float, default=1.0, metavar="N", help="passes over the training pairs (default 1)")
    p.add_argument("--mask-prompt", action="store_true", help="implied: DPO scores the replies only")
    p.add_argument("--max-length", "--context-length", dest="max_length", type=int_at_least(2), default=None,
                   metavar="N", help="longest pair in tokens (prompt + longer reply); longer pairs are skipped "
                                     "(default: the model's context length)")
    p.add_argument("--strict", action="store_true",
                   help="refuse the data file at its first bad record instead of skipping such records")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", action="store_true",
                   help="train low-rank adapters only; the reference is the same model with them off (one model)")
    g.add_argument("--lora-rank", type=int_at_least(1), default=8, metavar="R", help="adapter rank (default 8)")
    g.add_argument("--lora-alpha", type=positive_float, default=16.0, metavar="A", help="adapter scale alpha (default 16)")
    g.add_argument("--lora-dropout", type=FRACTION, default=0.0, metavar="P",
                   help="dropout on adapter inputs (default 0: DPO trains without dropout)")
    g.add_argument("--lora-targets", default="c_attn,c_proj,c_fc", metavar="NAMES",
                   help="comma-separated Linear layers to adapt (default c_attn,c_proj,c_fc)")
    g.add_argument("--merge", action="store_true",
                   help="fold the adapters into the weights and save a standalone checkpoint")
    _add_loop_args(p, batch=8, lr=None, eval_every=None, save_every=200, seed=123, dropout="0, as trl's DPO")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=60, metavar="N",
                   help="longest sample reply printed at the end (default 60)")
    p.set_defaults(run=_run_dpo)

    p = sub.add_parser(
        "evaluate", help="loss, perplexity and accuracy of a model on data, with plots",
        description="Evaluate a model on text or instruction data: loss, perplexity and next-token accuracy (on "
                    "response tokens for instruction data) for the train/val/test splits, as a table and JSON, plus "
                    "loss-plot.pdf/.png, accuracy-plot.pdf and sample_generations.txt in the output folder.",
    )
    p.add_argument("--model", "-m", required=True, metavar="MODEL", help="a model directory, saved name, official name, or LoRA adapter")
    p.add_argument("--data", nargs="+", metavar="FILE",
                   help="instruction data (.json/.jsonl) or text files, folders or globs; with --task, the task's "
                        "file (default: downloaded through `datasets`)")
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
    p.add_argument("--reference", default=None, metavar="MODEL",
                   help="preference data: the model DPO started from (default: the one recorded beside a DPO model, "
                        "or a LoRA adapter's base with the adapter off)")
    p.add_argument("--beta", type=positive_float, default=None, metavar="X",
                   help="preference data: the rewards' beta (default: the DPO run's, else 0.1)")
    p.add_argument("--quantize", choices=["int8", "bfloat16"], default=None,
                   help="evaluate the model with its weights packed to int8 or bfloat16, as `generate --quantize` runs it")
    g = p.add_argument_group("standard benchmarks (README, Evaluation)")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--task", choices=TASKS, default=None,
                       help="score a benchmark instead of data splits; writes OUT/TASK.json")
    which.add_argument("--harness", default=None, metavar="TASKS",
                       help="comma-separated lm-evaluation-harness tasks, run through gpt2tui's model (needs "
                            "gpt2tui[eval]); writes OUT/harness.json")
    g.add_argument("--limit", type=int_at_least(1), default=None, metavar="N", help="the first N examples only")
    g.add_argument("--stride", type=int_at_least(1), default=None, metavar="N",
                   help="wikitext: new tokens scored per window (default: the context length, disjoint windows)")
    g.add_argument("--include-path", default=None, metavar="DIR", help="--harness: a folder of your own task YAMLs")
    g.add_argument("--num-fewshot", type=int_at_least(0), default=None, metavar="N",
                   help="--harness: few-shot examples per prompt (default: each task's)")
    p.set_defaults(run=_run_evaluate)
