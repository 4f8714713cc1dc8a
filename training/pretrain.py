"""`gpt2tui pretrain`: a GPT-2 trained on text files, from scratch or continued from weights.

    gpt2tui pretrain --data story.txt --out runs/story --preset tiny --max-steps 500
    gpt2tui pretrain --data hf:roneneldan/TinyStories --out runs/tiny-stories --preset mini

`OUT` holds `checkpoint/` (see `loop.py`), `metrics.jsonl`, `samples.txt`, the token shards in `tokens/`, and
`config.json` / `model.safetensors` links into the checkpoint, so `gpt2tui generate --model OUT` loads the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from rich.console import Console

from gpt2tui.atomic import check_replaceable, ensure_writable, recover
from gpt2tui.config import PRESETS, GPT2Config
from gpt2tui.errors import ConfigError, TrainingError
from gpt2tui.generate import generate
from gpt2tui.model import GPT2
from gpt2tui.quant import refuse_training
from gpt2tui.tokenizer import Tokenizer
from gpt2tui.weights import load_weights, resolve

from .data import PretrainData, is_token_file, prepare_corpus
from .loop import (
    CHECKPOINT,
    TrainConfig,
    Trainer,
    barrier,
    check_batch_fits,
    is_oom,
    is_run_entry,
    read_trainer_state,
    setup_distributed,
    teardown_distributed,
)
from .presets import TRAIN_PRESETS
from .sources import Options, source_names


def console():
    return Console(stderr=True, highlight=False)


def build_config(args) -> GPT2Config | None:
    """The config asked for on the command line (None when nothing about the size was given)."""
    custom = {k: getattr(args, k) for k in ("n_layers", "n_heads", "emb_dim") if getattr(args, k, None)}
    if args.preset is None and not custom:
        return None
    base = dict(TRAIN_PRESETS.get(args.preset, {})) if args.preset in TRAIN_PRESETS else dict(PRESETS.get(args.preset or "gpt2"))
    fields = {**base, **custom}
    if args.context_length:
        fields["context_length"] = args.context_length
    if args.dropout is not None:
        fields["drop_rate"] = args.dropout
    return GPT2Config(**fields)


def load_initial_model(args, d):
    """The model to train: resumed from OUT's checkpoint, continued from --init weights, or new."""
    out = Path(args.out)
    wanted = build_config(args)
    if args.resume:
        model = load_weights(out / CHECKPOINT, dtype=torch.float32)
        if wanted is not None:
            saved, now = model.config.to_dict(), wanted.to_dict()
            diff = [k for k in ("n_layers", "n_heads", "emb_dim") if saved[k] != now[k]]
            if diff:
                raise ConfigError(
                    f"{out / CHECKPOINT} was trained with " + ", ".join(f"{k}={saved[k]}" for k in diff)
                    + ", but this command asks for " + ", ".join(f"{k}={now[k]}" for k in diff)
                    + "; drop the size flags to resume it, or start a new run in another --out"
                )
        return model
    if args.init:
        if wanted is not None and (args.preset or args.n_layers or args.n_heads or args.emb_dim):
            raise ConfigError("--init takes the model's size from its weights; leave out --preset and the size flags")
        model = load_weights(resolve(args.init), dtype=torch.float32)
        refuse_training(model, f"training from --init {args.init}")
        if args.dropout is not None:
            model.config.drop_rate = args.dropout
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = args.dropout
                if hasattr(m, "dropout") and isinstance(m.dropout, float):
                    m.dropout = args.dropout
        return model
    torch.manual_seed(args.seed)  # every rank builds the same initial weights (DDP also broadcasts rank 0's)
    config = wanted or GPT2Config.from_preset("gpt2")
    try:
        return GPT2(config)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_oom(e):
            raise
        raise TrainingError(f"a model of {config.n_params() / 1e6:,.0f}M parameters does not fit in memory here; "
                            f"choose a smaller --preset, --emb-dim or --n-layers") from None


def run(args) -> int:
    out = Path(args.out).expanduser()
    recover(out / CHECKPOINT)  # a save killed between its two renames: its new checkpoint is put back
    if not args.resume and (out / CHECKPOINT).exists():
        raise TrainingError(f"{out} already holds a training run; add --resume to continue it, or choose another --out")
    # Before any work: nothing of the user's gets replaced, and the outputs can be written.
    if not args.resume:
        check_replaceable(out, is_run_entry, "--out")
    if args.tokens_dir:
        check_replaceable(args.tokens_dir, is_token_file, "--tokens-dir")
    ensure_writable(out, "--out")
    if args.resume:
        # Before tokenising: other data would replace the run's token shards, and then be refused by the resume.

        trained_on = read_trainer_state(out)["run"].get("data_sources")
        given = source_names(args.data)
        if trained_on is not None and trained_on != given:
            raise TrainingError(f"--resume continues a run on its own data ({', '.join(trained_on[:2])}"
                                f"{', ...' if len(trained_on) > 2 else ''}), and --data names other files; pass the "
                                f"run's --data, or start a new run in another --out")
    d = setup_distributed(args.device)
    con = console()
    try:
        model = load_initial_model(args, d)
        T = args.context_length or model.config.context_length
        if T > model.config.context_length:
            raise ConfigError(f"--context-length {T} is above the model's context length "
                              f"{model.config.context_length}; use at most {model.config.context_length}")
        check_batch_fits(args.batch_size, T, model.config, d.device)  # before tokenising
        tokenizer = Tokenizer()
        tokens_dir = Path(args.tokens_dir).expanduser() if args.tokens_dir else out / "tokens"
        options = Options(text_field=args.text_field, config=args.data_config, split=args.data_split,
                          strict=args.strict)
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            corpus = prepare_corpus(args.data, tokens_dir, tokenizer, args.val_fraction,
                                    log=lambda m: con.print(m, highlight=False, soft_wrap=True), options=options,
                                    console=con)
        barrier(d)
        if not d.main:  # reuses rank 0's shards
            corpus = prepare_corpus(args.data, tokens_dir, tokenizer, args.val_fraction, options=options)
        data = PretrainData(corpus.train, corpus.val, T, args.batch_size, args.seed)
        cfg = TrainConfig.from_args(args)
        run_info = {"task": "pretrain", "model": model.config.to_dict(), "context_length": T,
                    "val_fraction": args.val_fraction, "data_tokens": corpus.manifest["tokens"],
                    "data_sources": [s["path"] if "path" in s else f"hf:{s['hf']}" for s in corpus.manifest["sources"]]}
        prompt = args.sample_prompt
        if prompt is None:
            head = corpus.val if len(corpus.val) >= 8 else corpus.train
            prompt = tokenizer.decode([int(i) for i in head.slice(0, min(8, len(head)))])

        def sampler(m, step):
            return prompt + generate(m, tokenizer, prompt, max_new_tokens=args.sample_tokens, temperature=0.8,
                                     top_k=40, seed=args.seed)

        if d.main:
            n = model.num_params()
            con.print(f"pretraining {n / 1e6:.1f}M parameters on {corpus.manifest['tokens']:,} tokens "
                      f"({len(corpus.train):,} train / {len(corpus.val):,} val), context {T}, "
                      f"{args.batch_size}×{args.grad_accum}×{d.world} sequences per step, on {d.device}",
                      highlight=False)
        trainer = Trainer(model, data, cfg, out, run_info, d, sampler=sampler if args.sample_tokens else None,
                          console=con)
        last = trainer.fit(resume=args.resume)
        if d.main:
            link_model(out)
            summary = f"step {trainer.step}: train loss {last.get('train_loss', float('nan')):.4f}"
            if "val_loss" in last:
                summary += f", val loss {last['val_loss']:.4f}"
            con.print(f"[green]done[/] — {summary}. Model in {out}; try: gpt2tui generate --model {out} \"{prompt.strip()[:30]}\"",
                      highlight=False, soft_wrap=True)
        return 0
    finally:
        teardown_distributed()


def link_model(out: Path) -> None:
    """`OUT/config.json` and `OUT/model.safetensors` as relative links into the checkpoint, so OUT is a model."""
    for name in ("config.json", "model.safetensors"):
        link = out / name
        if link.is_symlink() or not link.exists():
            if link.is_symlink():
                link.unlink()
            os.symlink(Path(CHECKPOINT) / name, link)
