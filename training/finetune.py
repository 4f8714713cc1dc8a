"""`gpt2tui finetune`: instruction-tune a model into a chatbot, fully or with LoRA adapters.

    gpt2tui finetune --data instructions.json --base gpt2 --out my-bot --epochs 2
    gpt2tui finetune --data hf:tatsu-lab/alpaca --base gpt2-medium --out my-bot   # a Hugging Face instruction set
    gpt2tui --model my-bot                      # chat with it

The final model goes to `--out`: a bare name lands in the gpt2tui models folder (where `--model NAME` finds it), a
path is used as is. It is saved with the `alpaca` chat template, the one it was trained on. `--lora` without `--merge`
saves only the adapter (`adapter_config.json` + `adapter.safetensors`, naming its base), which the chat, `generate` and
`evaluate` load by folding it into that base (so the base must stay where it was); `--merge` writes a standalone
checkpoint instead.

The run directory (`--run-dir`, default `<data folder>/runs/NAME`) holds the training checkpoint (for `--resume`),
`metrics.jsonl` and `test-responses.json` (each test example with the model's greedy response).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console

from gpt2tui.atomic import MODEL_DIR_FILES, check_replaceable, ensure_writable, recover
from gpt2tui.chat import TEMPLATES, encode_conversation
from gpt2tui.errors import ConfigError, DataError, TrainingError
from gpt2tui.generate import generate
from gpt2tui.quant import refuse_training
from gpt2tui.tokenizer import Tokenizer
from gpt2tui.weights import data_dir, load_weights, models_dir, resolve, save_checkpoint

from .data import InstructionData, load_examples, split_examples, truncate
from .loop import (
    CHECKPOINT,
    TrainConfig,
    Trainer,
    barrier,
    is_run_entry,
    setup_distributed,
    teardown_distributed,
)
from .lora import LoRAConfig, apply_lora, merge_lora, save_adapter

TEMPLATE = "alpaca"


def console():
    return Console(stderr=True, highlight=False)


def destination(out: str) -> Path:
    """A bare name → the models folder; anything path-like → that path."""
    if not out.strip():
        raise ConfigError("--out is empty; give the model a name (saved in the models folder) or a directory path")
    if os.sep in out or (os.altsep and os.altsep in out) or out.startswith((".", "~")):
        return Path(out).expanduser()
    return models_dir() / out


def default_run_dir(dest: Path) -> Path:
    return data_dir() / "runs" / dest.name


def prepare_outputs(args, kind: str) -> tuple[Path, Path]:
    """The model's destination and the run directory of `--out`/`--run-dir`, checked before any work: the model may
    replace only a model directory, the run only a run (a second one needs --resume), and both can be written."""
    dest = destination(args.out)
    run_dir = Path(args.run_dir).expanduser() if args.run_dir else default_run_dir(dest)
    recover(run_dir / CHECKPOINT)  # a save killed between its two renames: its new checkpoint is put back
    if not args.resume and (run_dir / CHECKPOINT).exists():
        raise TrainingError(f"{run_dir} already holds a {kind} run; add --resume to continue it, or pass another "
                            "--out or --run-dir")
    check_replaceable(dest, MODEL_DIR_FILES, "--out")
    if not args.resume:
        check_replaceable(run_dir, is_run_entry, "--run-dir")
    ensure_writable(dest.parent, "--out")
    ensure_writable(run_dir, "--run-dir")
    return dest, run_dir


def set_dropout(model: torch.nn.Module, p: float) -> None:
    model.config.drop_rate = p
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = p


def test_responses(model, tokenizer, examples, max_new_tokens: int, batch: int = 8) -> list[dict]:
    """Each test record with the model's greedy `model_response` to its prompt (the conversation without its last
    reply), as the seed's `instruction-data-with-response.json` has them."""
    template = TEMPLATES[TEMPLATE]
    rows = []
    for s in range(0, len(examples), batch):
        part = examples[s : s + batch]
        prompts = [encode_conversation(tokenizer, e.messages[:-1], template)[0] for e in part]
        replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                           stop=template.stop)
        for e, reply in zip(part, replies, strict=False):
            record = e.record if e.record is not None else {"messages": e.messages}
            rows.append({**record, "model_response": reply.strip()})
    return rows


def run(args) -> int:
    if args.merge and not args.lora:
        raise ConfigError("--merge folds LoRA adapters into the weights; it needs --lora")
    dest, run_dir = prepare_outputs(args, "fine-tuning")
    d = setup_distributed(args.device)
    con = console()
    try:
        base_path = resolve(args.base)
        model = load_weights(base_path, dtype=torch.float32)
        refuse_training(model, f"finetuning {args.base}")

        tokenizer = Tokenizer()
        ctx = args.context_length or model.config.context_length
        if ctx > model.config.context_length:
            raise ConfigError(f"--context-length {ctx} is above {args.base}'s context length "
                              f"{model.config.context_length}; use at most {model.config.context_length}")
        examples = load_examples(args.data, tokenizer, TEMPLATE, config=args.data_config,
                                 split=args.data_split)
        splits = split_examples(examples, args.seed)
        had_train = bool(splits["train"])
        cut_total = 0
        for name in splits:
            splits[name], cut, dropped = truncate(splits[name], ctx + 1)
            cut_total += cut
            if dropped and d.main:
                con.print(f"[yellow]warning:[/] {dropped} {name} example(s) had no response left within "
                          f"{ctx} tokens and were left out", highlight=False)
        if cut_total and d.main:
            con.print(f"[yellow]warning:[/] {cut_total} example(s) longer than {ctx} tokens were cut", highlight=False)
        if had_train and not splits["train"]:
            raise DataError(f"no training example has a response within {ctx} tokens; raise --context-length (the "
                            f"model takes up to {model.config.context_length}) or shorten the prompts")
        data = InstructionData(splits, args.batch_size, args.seed, tokenizer.eot_token, args.mask_prompt)
        per_step = args.grad_accum * d.world
        steps_per_epoch = max(1, math.ceil(data.batches_per_epoch() / per_step))
        max_steps = max(1, math.ceil(args.epochs * data.batches_per_epoch() / per_step))
        if args.dropout is not None:
            set_dropout(model, args.dropout)
        lora = None
        if args.lora:
            targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
            lora = LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
            torch.manual_seed(args.seed)  # the adapters' A matrices: the same on every rank and on resume
            apply_lora(model, lora)
        lr = args.lr or (5e-4 if args.lora else 5e-5)
        eval_every = args.eval_every if args.eval_every is not None else max(1, steps_per_epoch // 4, max_steps // 50)
        cfg = TrainConfig.from_args(args, max_steps=max_steps, lr=lr, eval_every=eval_every)
        run_info = {"task": "finetune", "model": model.config.to_dict(), "base": str(base_path),
                    "context_length": ctx, "mask_prompt": args.mask_prompt, "lora": lora and asdict(lora),
                    "data": args.data if args.data.startswith("hf:") else str(Path(args.data).expanduser().resolve()),
                    "examples": len(examples)}
        sample_example = (splits["val"] or splits["train"])[0]

        def sampler(m, step):
            rows = test_responses(m, tokenizer, [sample_example], max_new_tokens=min(args.max_new_tokens, 60))
            return f"{sample_example.messages[-2]['content'][:80]!r} → {rows[0]['model_response']}"

        if d.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            con.print(
                f"fine-tuning {'LoRA adapters' if lora else 'all weights'} ({trainable / 1e6:.2f}M trainable of "
                f"{model.num_params() / 1e6:.1f}M) of {args.base} on {len(splits['train'])} examples "
                f"({len(splits['val'])} val, {len(splits['test'])} test), {max_steps} steps, lr {lr:g}, on {d.device}",
                highlight=False,
            )
        barrier(d)
        trainer = Trainer(model, data, cfg, run_dir, run_info, d, sampler=sampler, console=con,
                          chat_template=TEMPLATE)
        trainer.fit(resume=args.resume)
        if d.main:
            model.eval()
            n_test = len(splits["test"]) if args.test_responses is None else min(args.test_responses, len(splits["test"]))
            if n_test:
                rows = test_responses(model, tokenizer, splits["test"][:n_test], args.max_new_tokens)
                (run_dir / "test-responses.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
                con.print(f"test responses: {run_dir / 'test-responses.json'}", highlight=False)
            if lora and not args.merge:
                save_adapter(model, dest, base=str(base_path.resolve()), chat_template=TEMPLATE)
                name = dest.name if dest.parent == destination(dest.name).parent else str(dest)
                con.print(f"[green]saved[/] LoRA adapter in {dest}; chat with it: gpt2tui --model {name} (it is "
                          f"folded into its base, {base_path}, when loaded: keep that base where it is, or add "
                          "--merge for a standalone checkpoint)", highlight=False, soft_wrap=True)
            else:
                if lora:
                    merge_lora(model)
                save_checkpoint(model, dest, chat_template=TEMPLATE)
                name = dest.name if dest.parent == destination(dest.name).parent else str(dest)
                con.print(f"[green]saved[/] {dest}; chat with it: gpt2tui --model {name}", highlight=False,
                          soft_wrap=True)
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file():  # beside the model, so `evaluate` finds the training curves
                (dest / "metrics.jsonl").write_bytes(metrics.read_bytes())
        barrier(d)
        return 0
    finally:
        teardown_distributed()
