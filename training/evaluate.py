"""`gpt2tui evaluate`: loss, perplexity and next-token accuracy of a model per data split, with plots.

Preference data (records with `chosen` and `rejected`, as `gpt2tui dpo` reads) is scored as DPO scores it instead:
the DPO loss, chosen and rejected rewards, their margin, the preference accuracy and the replies' log-probabilities
per split, against the reference model (`--reference`; by default the one `dpo` recorded beside the model in
`dpo.json`, or a LoRA adapter's own base with the adapter off), plus `margin-plot` and `preference-accuracy-plot`
(PDF and PNG) of the run's curves.

Instruction data (`.json` / `.jsonl`) is split 85/5/10 with the same seed fine-tuning used, and scored on response
tokens only (what the model is asked to produce). Text is tokenised and split train/val as pretraining does (text has
no test split). Written to `--out` (default `outputs/`): `evaluation.json`, `loss-plot.pdf` and `.png`,
`accuracy-plot.pdf` and `sample_generations.txt`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gpt2tui.atomic import ensure_writable, naming_errors
from gpt2tui.chat import TEMPLATES, encode_conversation, template_for
from gpt2tui.errors import CheckpointError, ConfigError, DataError
from gpt2tui.generate import generate
from gpt2tui.quant import quantization_of
from gpt2tui.weights import load_model, resolve

from . import plots
from .data import InstructionData, PretrainData, load_examples, split_examples, tokenize_in_memory, truncate
from .dpo import DPO_INFO, pair_logps, split_metrics
from .loop import evaluate_batches, read_metrics
from .lora import LoRALinear, adapters_disabled, is_adapter, load_adapted
from .preferences import is_preference_file, load_pairs


def load_any(name: str, device=None, quantize: str | None = None):
    """`(model, tokenizer, directory)` for a plain model or a LoRA adapter directory; `quantize` packs the weights
    (an adapter is merged into its base first)."""
    path = resolve(name)
    if is_adapter(path) and quantize is None:
        model, tokenizer = load_adapted(path, device=device)
    else:
        model, tokenizer = load_model(path, device=device, dtype=torch.float32, quantize=quantize)
    return model, tokenizer, path


def explicit_history(explicit: str) -> list[dict]:
    """`--metrics FILE`, checked before the evaluation runs: a file the user named must be there and hold records."""
    path = Path(explicit).expanduser()
    if not path.is_file():
        raise DataError(f"--metrics {explicit}: no such file; pass a training run's metrics.jsonl, or leave --metrics "
                        "out to use the one beside the model")
    rows = read_metrics(path)
    if not rows:
        raise DataError(f"--metrics {explicit}: no step records in it (a training run's metrics.jsonl has one JSON "
                        "object per line)")
    return rows


def find_history(model_dir: Path) -> list[dict] | None:
    """The training run's `metrics.jsonl`, beside the model or in its parent (a pretraining run's OUT)."""
    for path in (model_dir / "metrics.jsonl", model_dir.resolve().parent / "metrics.jsonl"):
        if path.is_file():
            return read_metrics(path)
    return None


def is_instruction_file(paths: list[str]) -> bool:
    return len(paths) == 1 and Path(paths[0]).suffix.lower() in (".json", ".jsonl")



def _write_outputs(out: Path, report: dict, samples: list[str], history, results: dict, plot) -> None:
    """evaluation.json, the loss plot and `plot`'s (accuracy or preference plots), and the sample generations."""
    with naming_errors(out / "evaluation.json"):
        (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    with naming_errors(out):
        plots.loss_plot(history, results, out)
        plot(history, results, out)
        (out / "sample_generations.txt").write_text(
            "\n".join(f"=== sample {i + 1} ===\n{s}" for i, s in enumerate(samples)), encoding="utf-8")


def run(args) -> int:
    con = Console(stderr=True, highlight=False)
    out = ensure_writable(Path(args.out).expanduser(), "--out")  # before the evaluation, not after it
    given_history = explicit_history(args.metrics) if args.metrics else None
    model, tokenizer, model_dir = load_any(args.model, args.device, args.quantize)
    model.eval()
    ctx = args.context_length or model.config.context_length
    if ctx > model.config.context_length:
        raise ConfigError(f"--context-length {ctx} is above the model's context length {model.config.context_length}")
    if is_instruction_file(args.data) and is_preference_file(args.data[0]):
        return run_preferences(args, model, tokenizer, model_dir, out, given_history, ctx, con)
    results: dict[str, dict] = {}
    samples: list[str] = []
    if is_instruction_file(args.data):
        examples = load_examples(args.data[0], tokenizer)
        splits = {k: truncate(v, ctx + 1)[0] for k, v in split_examples(examples, args.seed).items()}
        data = InstructionData({**splits, "train": splits["train"] or splits["val"]}, args.batch_size, args.seed,
                               tokenizer.eot_token, mask_prompt=True)
        for split in ("train", "val", "test"):
            if splits[split]:
                batches = data.eval_batches(split, args.max_batches, response_only=True)
                results[split] = evaluate_batches(model, batches, model.device)
        template = TEMPLATES["alpaca"]
        for e in (splits["test"] or splits["val"] or splits["train"])[: args.samples]:
            prompt = encode_conversation(tokenizer, e.messages[:-1], template)[0]
            reply = generate(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens, temperature=0.0,
                             stop=template.stop)[0]
            samples.append(f"{template.render(e.messages[:-1])}\n\n[expected]\n{e.messages[-1]['content']}\n\n"
                           f"[model]\n{reply.strip()}\n")
    else:
        train, val = tokenize_in_memory(args.data, tokenizer, args.val_fraction)
        data = PretrainData(train, val, min(ctx, max(1, len(train) - 1)), args.batch_size, args.seed)
        for split in ("train", "val"):
            if (len(val) if split == "val" else len(train)) >= 2:
                results[split] = evaluate_batches(model, data.eval_batches(split, args.max_batches), model.device)
        stream = val if len(val) >= 16 else train
        step = max(1, (len(stream) - 16) // max(1, args.samples))
        for i in range(args.samples):
            prompt = [int(t) for t in stream[i * step : i * step + 16]]
            if len(prompt) < 2:
                break
            reply = generate(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens, temperature=0.0)[0]
            samples.append(f"[prompt]\n{tokenizer.decode(prompt)}\n\n[model]\n{reply}\n")

    table = Table(title=f"{args.model} on {', '.join(args.data)}")
    for col in ("split", "tokens", "loss", "perplexity", "accuracy"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, r in results.items():
        table.add_row(split, f"{r['tokens']:,}", f"{r['loss']:.4f}", f"{r['ppl']:.2f}", f"{r['acc']:.4f}")
    Console(highlight=False).print(table)
    report = {"model": str(model_dir), "data": args.data, "quantization": quantization_of(model),
              "scored_on": "response tokens" if is_instruction_file(args.data) else "all tokens",
              "splits": {k: {**v, "loss": _finite(v["loss"]), "ppl": _finite(v["ppl"])} for k, v in results.items()}}
    history = given_history if args.metrics else find_history(model_dir)
    _write_outputs(out, report, samples, history, results, plots.accuracy_plot)
    con.print(f"wrote evaluation.json, loss-plot.pdf/.png, accuracy-plot.pdf and sample_generations.txt to {out}"
              + ("" if history else " (no metrics.jsonl found: plots show the evaluated splits)"))
    return 0


def _finite(x: float):
    return x if math.isfinite(x) else None


def reference_for(args, model, model_dir: Path):
    """`(reference model, beta, what it is)` for scoring preference pairs; a reference of None means the model itself
    with its LoRA adapters off (no second model)."""
    info = {}
    path = model_dir / DPO_INFO
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            assert isinstance(info, dict)
        except (ValueError, AssertionError, UnicodeDecodeError):
            raise CheckpointError(f"{path} is damaged; pass --reference MODEL and --beta X") from None
    beta = args.beta or info.get("beta") or 0.1
    if args.reference:
        return load_any(args.reference, model.device)[0].eval(), beta, args.reference
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        return None, beta, "the base model (the adapter off)"
    if info.get("reference"):
        return load_any(info["reference"], model.device)[0].eval(), beta, info["reference"]
    raise ConfigError(f"{args.data[0]} holds preference pairs, scored against the model DPO started from; pass it "
                      "as --reference MODEL")


def run_preferences(args, model, tokenizer, model_dir: Path, out: Path, given_history, ctx: int, con) -> int:
    """`evaluate` of preference data: DPO's metrics per split, a table, evaluation.json, plots and samples."""
    reference, beta, reference_name = reference_for(args, model, model_dir)
    template = template_for(model)
    pairs, skipped = load_pairs(args.data[0], tokenizer, template, ctx)
    if skipped:
        con.print(f"[yellow]warning:[/] {len(skipped)} bad record(s) left out, as dpo leaves them out (first: "
                  f"{skipped[0]})", highlight=False, soft_wrap=True)
    splits = split_examples(pairs, args.seed)
    results: dict[str, dict] = {}
    for split in ("train", "val", "test"):
        part = splits[split][: args.max_batches * args.batch_size]
        if not part:
            continue
        policy = pair_logps(model, part, args.batch_size, tokenizer.eot_token, model.device)
        with adapters_disabled(model):
            ref = pair_logps(model if reference is None else reference, part, args.batch_size, tokenizer.eot_token,
                             model.device)
        results[split] = split_metrics(policy, ref, beta)
    samples = []
    for p in (splits["test"] or splits["val"] or splits["train"])[: args.samples]:
        prompt = encode_conversation(tokenizer, p.prompt, template)[0]
        reply = generate(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens, temperature=0.0,
                         stop=template.stop)[0]
        samples.append(f"{template.render(p.prompt)}\n\n[chosen]\n{p.chosen.messages[-1]['content']}\n\n[rejected]\n"
                       f"{p.rejected.messages[-1]['content']}\n\n[model]\n{reply.strip()}\n")
    table = Table(title=f"{args.model} on {args.data[0]}: preference pairs, beta {beta:g}",
                  caption="reward: beta × log-ratio to the reference; accuracy: share of pairs whose chosen reward is "
                          "the higher; logp: a reply's summed log-probability")
    columns = ("split", "pairs", "DPO loss", "margin", "accuracy", "reward chosen", "rejected", "logp chosen",
               "rejected")
    for col in columns:
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, r in results.items():
        table.add_row(split, f"{r['pairs']:,}", f"{r['loss']:.4f}", f"{r['margin']:.4f}", f"{r['pref_acc']:.4f}",
                      f"{r['chosen_reward']:.4f}", f"{r['rejected_reward']:.4f}", f"{r['chosen_logp']:.2f}",
                      f"{r['rejected_logp']:.2f}")
    Console(highlight=False).print(table)
    report = {"model": str(model_dir), "data": args.data, "quantization": quantization_of(model),
              "scored_on": "preference pairs (the replies' tokens)", "beta": beta, "reference": str(reference_name),
              "splits": {k: {n: _finite(v) if isinstance(v, float) else v for n, v in r.items()}
                         for k, r in results.items()}}
    history = given_history if args.metrics else find_history(model_dir)
    _write_outputs(out, report, samples, history, results, plots.preference_plots)
    con.print(f"wrote evaluation.json, loss-plot, margin-plot and preference-accuracy-plot (.pdf/.png) and "
              f"sample_generations.txt to {out}" + ("" if history else " (no metrics.jsonl found: plots show the "
                                                                        "evaluated splits)"))
    return 0
