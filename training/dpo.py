"""Direct Preference Optimization (Rafailov et al., 2023): the loss, the reference log-probabilities, the metrics.

For a prompt x with a chosen reply y_w and a rejected one y_l, and log π(y|x) the summed log-probabilities of a
reply's tokens (its end token included, the prompt's excluded):

    reward(y)  = β · (log π_θ(y|x) − log π_ref(y|x))
    loss       = −log σ(reward(y_w) − reward(y_l))

averaged over the pairs of a batch: trl's "sigmoid" loss. The reference π_ref is the model before DPO. Its
log-probabilities are computed once per pair, in eval mode, and cached in the pairs (`cache_reference`), so the
reference model is not kept beside the policy; with LoRA it is the policy itself with its adapters switched off.

`DPO` is the Trainer's objective (`loop.NextToken`'s counterpart), so preference tuning runs through the one training
loop: its progress bar, checkpoints, `--resume`, AMP and DDP. Each step and evaluation records the DPO loss, the
chosen and rejected rewards, their margin, the preference accuracy (the share of pairs whose chosen reward is the
higher) and the mean log-probabilities of the chosen and rejected replies.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gpt2tui.atomic import write_atomic
from gpt2tui.chat import encode_conversation, template_for
from gpt2tui.errors import ConfigError, DataError
from gpt2tui.generate import generate
from gpt2tui.quant import refuse_training
from gpt2tui.tokenizer import Tokenizer
from gpt2tui.weights import load_weights, resolve, save_checkpoint

from .data import split_examples
from .finetune import console, destination, prepare_outputs, set_dropout
from .loop import (
    Dist,
    TrainConfig,
    Trainer,
    barrier,
    precision,
    setup_distributed,
    teardown_distributed,
)
from .lora import LoRAConfig, adapters_disabled, apply_lora, merge_lora, save_adapter
from .preferences import Pair, PairBatch, PreferenceData, collate_pairs, load_pairs

# Beside a DPO model: its reference and β, so `evaluate` scores preference data against the same reference.
DPO_INFO = "dpo.json"
SKIPPED_SHOWN = 5  # bad records named one by one; the rest are counted

# The per-pair sums an objective step returns, in this order; each becomes a mean over pairs.
STATS = ("pairs", "chosen_reward", "rejected_reward", "correct", "chosen_logp", "rejected_logp", "loss")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards `(B,)` from summed log-probabilities `(B,)`."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)  # (B,)
    return losses, chosen_rewards, rejected_rewards


def sequence_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities `(R,)` of each row's scored targets (`y` `(R, T)`, -100 elsewhere), through the fused
    cross-entropy's per-token losses (the `(R, T, V)` logits never exist; ignored targets add 0)."""
    _, nll = model(x, targets=y, return_logits=False, reduction="none")  # (R, T), (R, T)
    return -nll.sum(dim=-1)  # (R,)


def pair_stats(losses, chosen_rewards, rejected_rewards, policy_chosen, policy_rejected) -> torch.Tensor:
    """The `STATS` sums of a batch, float64 `(len(STATS),)`: summed over micro-batches and ranks, then averaged."""
    with torch.no_grad():
        parts = [
            torch.tensor(float(losses.numel()), device=losses.device),
            chosen_rewards.sum(),
            rejected_rewards.sum(),
            (chosen_rewards > rejected_rewards).sum(),
            policy_chosen.sum(),
            policy_rejected.sum(),
            losses.sum(),
        ]
        return torch.stack([p.double() for p in parts])


def means(stats: torch.Tensor, prefix: str) -> dict:
    """Record fields `{prefix}_loss`, `_chosen_reward`, `_rejected_reward`, `_margin`, `_pref_acc`, `_chosen_logp`,
    `_rejected_logp` from `STATS` sums."""
    s = dict(zip(STATS, (stats / stats[0].clamp(min=1)).tolist(), strict=True))
    return {
        f"{prefix}_loss": s["loss"],
        f"{prefix}_chosen_reward": s["chosen_reward"],
        f"{prefix}_rejected_reward": s["rejected_reward"],
        f"{prefix}_margin": s["chosen_reward"] - s["rejected_reward"],
        f"{prefix}_pref_acc": s["correct"],
        f"{prefix}_chosen_logp": s["chosen_logp"],
        f"{prefix}_rejected_logp": s["rejected_logp"],
    }


def batch_stats(
    model, batch: PairBatch, beta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean DPO loss of a batch of pairs and its `STATS` sums."""
    x, y, ref = (
        batch.x.to(device, non_blocking=True),
        batch.y.to(device, non_blocking=True),
        batch.ref.to(device, non_blocking=True),
    )  # (2B, T), (2B, T), (2B,)
    logps = sequence_logps(model, x, y)  # (2B,)
    B = ref.shape[0] // 2
    losses, chosen, rejected = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta)
    return losses.mean(), pair_stats(losses, chosen, rejected, logps[:B], logps[B:])


class DPO:
    """The Trainer's objective for preference tuning (see `loop.NextToken` for the protocol)."""

    n_stats = len(STATS)

    def __init__(self, beta: float):
        self.beta = beta

    def batch_shape(self, batch: PairBatch) -> tuple[int, int]:
        return tuple(batch.x.shape)  # (2B, T): both replies of every pair go through the model

    def micro(self, model, batch: PairBatch, device: torch.device):
        loss, stats = batch_stats(model, batch, self.beta, device)
        return loss, stats, batch.x.numel()

    def train_fields(self, stats: torch.Tensor) -> dict:
        fields = means(stats, "train")
        del fields["train_loss"]  # the loop records the loss itself
        return fields

    @torch.no_grad()
    def evaluate(
        self, model, batches, device: torch.device, autocast_dtype=None, d: Dist | None = None
    ) -> dict:
        was_training = model.training
        model.eval()
        sums = torch.zeros(self.n_stats, dtype=torch.float64, device=device)
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        for batch in batches:
            with ctx:
                sums += batch_stats(model, batch, self.beta, device)[1]
        if d is not None and d.on:
            dist.all_reduce(sums)
        model.train(was_training)
        return means(sums, "val") if sums[0] > 0 else {}

    def describe(self, fields: dict) -> str:
        if not fields:
            return "no validation pairs"
        return (
            f"val loss {fields['val_loss']:.4f}, val margin {fields['val_margin']:.4f}, val preference accuracy "
            f"{fields['val_pref_acc']:.3f}"
        )


@torch.no_grad()
def pair_logps(
    model, pairs: list[Pair], batch_size: int, pad_id: int, device: torch.device, autocast_dtype=None
) -> list[tuple[float, float]]:
    """`(chosen, rejected)` summed log-probabilities of each pair's replies under `model`, in eval mode."""
    was_training = model.training
    model.eval()
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    out: list[tuple[float, float]] = []
    try:
        for s in range(0, len(pairs), batch_size):
            batch = collate_pairs(pairs[s : s + batch_size], pad_id)
            with ctx:
                logps = sequence_logps(model, batch.x.to(device), batch.y.to(device)).float().cpu()  # (2B,)
            B = len(logps) // 2
            out += list(zip(logps[:B].tolist(), logps[B:].tolist(), strict=True))
    finally:
        model.train(was_training)
    return out


def cache_reference(
    model, pairs: list[Pair], batch_size: int, pad_id: int, device: torch.device, autocast_dtype=None
) -> None:
    """Each pair's reference log-probabilities into `pair.ref`: the model as it is now (before any DPO step), its LoRA
    adapters (if any) off. Float32 values round-trip exactly through the Python floats they are kept as. The pairs go
    in length order, in batches as `PreferenceData.eval_batches` makes them from a split, so that an evaluation
    before the first step reads the very same numbers: rewards exactly 0, not rounding noise that would count as
    preferences."""
    ordered = sorted(pairs, key=lambda p: len(p.ids))
    with adapters_disabled(model):
        logps = pair_logps(model, ordered, batch_size, pad_id, device, autocast_dtype)
    for pair, ref in zip(ordered, logps, strict=True):
        pair.ref = ref


def split_metrics(
    policy: list[tuple[float, float]], reference: list[tuple[float, float]], beta: float
) -> dict:
    """The DPO metrics of a split from its policy and reference log-probabilities: `pairs`, `loss`, `chosen_reward`,
    `rejected_reward`, `margin`, `pref_acc`, `chosen_logp`, `rejected_logp` (means over pairs)."""
    p, r = torch.tensor(policy, dtype=torch.float32), torch.tensor(reference, dtype=torch.float32)  # (N, 2)
    losses, chosen, rejected = dpo_loss(p[:, 0], p[:, 1], r[:, 0], r[:, 1], beta)
    fields = means(pair_stats(losses, chosen, rejected, p[:, 0], p[:, 1]), "x")
    return {"pairs": len(policy), **{k[2:]: v for k, v in fields.items()}}


def plain_layout(model: torch.nn.Module) -> None:
    """Projection weights back in row-major `(out, in)` memory, one at a time. The loader stores them transposed for
    one-token decoding (`GPT2.conv1d_layout_`), which training has no use for, and every checkpoint save would copy
    all of them at once to write them: a third of a model more at each save."""
    for p in model.parameters():
        if not p.data.is_contiguous():
            p.data = p.data.contiguous()


def run(args) -> int:
    if args.merge and not args.lora:
        raise ConfigError("--merge folds LoRA adapters into the weights; it needs --lora")
    dest, run_dir = prepare_outputs(args, "preference-tuning")
    d = setup_distributed(args.device)
    con = console()
    try:
        base_path = resolve(args.base)
        # One copy of the weights, and none of the file's pages kept beside them.
        model = load_weights(base_path, dtype=torch.float32, stream=True)
        refuse_training(model, f"preference-tuning {args.base}")
        plain_layout(model)
        template = template_for(model)  # the model's own: the prompts the chat will give it
        tokenizer = Tokenizer()
        window = model.config.context_length
        max_length = args.max_length or window
        if max_length > window:
            raise ConfigError(
                f"--max-length {max_length} is above {args.base}'s context length {window}; use at "
                f"most {window}"
            )
        pairs, skipped = load_pairs(args.data, tokenizer, template, max_length, args.strict)
        if skipped and d.main:
            for line in skipped[:SKIPPED_SHOWN]:
                con.print(f"[yellow]skipped[/] {line}", highlight=False, markup=True, soft_wrap=True)
            more = len(skipped) - SKIPPED_SHOWN
            con.print(
                f"[yellow]warning:[/] {len(skipped)} record(s) skipped"
                + (f" ({more} more not shown)" if more > 0 else "")
                + "; --strict refuses a file with any",
                highlight=False,
            )
        splits = split_examples(pairs, args.seed)
        if not splits["train"]:
            raise DataError(
                f"{args.data}: {len(pairs)} usable pair(s) leave none for training (85% go to it); add "
                "preference records"
            )
        set_dropout(model, 0.0 if args.dropout is None else args.dropout)  # off by default, as trl's DPO
        lora = None
        if args.lora:
            targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
            lora = LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
            torch.manual_seed(args.seed)  # the adapters' A matrices: the same on every rank and on resume
            apply_lora(model, lora)
        # Before the first step and before a resume loads its weights: the model is still the reference.
        model.to(d.device)
        if args.pad_vocab:
            model.pad_vocab_()  # its zero rows enter the softmax: the reference must see them as the policy will
        autocast_dtype, _ = precision(args.dtype, d.device)
        for name in ("train", "val"):
            cache_reference(
                model, splits[name], args.batch_size, tokenizer.eot_token, d.device, autocast_dtype
            )
        cached = len(splits["train"]) + len(splits["val"])
        data = PreferenceData(splits, args.batch_size, args.seed, tokenizer.eot_token, mask_prompt=True)
        per_step = args.grad_accum * d.world
        steps_per_epoch = max(1, math.ceil(data.batches_per_epoch() / per_step))
        max_steps = max(1, math.ceil(args.epochs * data.batches_per_epoch() / per_step))
        lr = args.lr or (5e-5 if args.lora else 5e-6)
        eval_every = (
            args.eval_every if args.eval_every is not None else max(1, steps_per_epoch // 4, max_steps // 50)
        )
        cfg = TrainConfig.from_args(args, max_steps=max_steps, lr=lr, eval_every=eval_every, eval_at_start=True)
        run_info = {
            "task": "dpo",
            "model": model.config.to_dict(),
            "base": str(base_path),
            "beta": args.beta,
            "max_length": max_length,
            "lora": lora and asdict(lora),
            "pairs": len(pairs),
            "data": str(Path(args.data).expanduser().resolve()),
        }
        sample = (splits["val"] or splits["train"])[0]

        def sampler(m, step):
            prompt = encode_conversation(tokenizer, sample.prompt, template)[0]
            reply = generate(
                m,
                tokenizer,
                [prompt],
                max_new_tokens=args.max_new_tokens,
                temperature=0.0,
                stop=template.stop,
            )[0]
            return f"{sample.prompt[-1]['content'][:80]!r} → {reply.strip()}"

        if d.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            con.print(
                f"preference-tuning {'LoRA adapters' if lora else 'all weights'} ({trainable / 1e6:.2f}M trainable "
                f"of {model.num_params() / 1e6:.1f}M) of {args.base} on {len(splits['train'])} pairs "
                f"({len(splits['val'])} val, {len(splits['test'])} test), beta {args.beta:g}, {max_steps} steps, "
                f"lr {lr:g}, on {d.device}; reference log-probabilities of {cached} pairs cached",
                highlight=False,
            )
        barrier(d)
        trainer = Trainer(
            model,
            data,
            cfg,
            run_dir,
            run_info,
            d,
            sampler=sampler,
            console=con,
            chat_template=model.chat_template,
            objective=DPO(args.beta),
        )
        trainer.fit(resume=args.resume)
        if d.main:
            model.eval()
            name = dest.name if dest.parent == destination(dest.name).parent else str(dest)
            if lora and not args.merge:
                save_adapter(model, dest, base=str(base_path.resolve()), chat_template=model.chat_template)
                con.print(
                    f"[green]saved[/] LoRA adapter in {dest}; chat with it: gpt2tui --model {name} (it is "
                    f"folded into its base, {base_path}, when loaded: keep that base where it is)",
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                if lora:
                    merge_lora(model)
                save_checkpoint(model, dest, chat_template=model.chat_template)
                con.print(
                    f"[green]saved[/] {dest}; chat with it: gpt2tui --model {name}",
                    highlight=False,
                    soft_wrap=True,
                )
            write_atomic(
                dest / DPO_INFO,
                json.dumps({"reference": str(base_path.resolve()), "beta": args.beta}, indent=2) + "\n",
            )
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file():  # beside the model, so `evaluate` finds the training curves
                (dest / "metrics.jsonl").write_bytes(metrics.read_bytes())
        barrier(d)
        return 0
    finally:
        teardown_distributed()
