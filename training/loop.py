"""The one training loop, shared by pretraining and fine-tuning.

AdamW (weight decay on matrices only), linear warm-up then cosine decay to `min_lr_ratio · lr`, gradient
accumulation, clipping at 1.0, bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing), optional
`torch.compile` and activation checkpointing, evaluation and samples at intervals, a Rich progress bar, and
`metrics.jsonl` (one JSON object per step: `step`, `train_loss`, `lr`, ..., plus `val_loss` where evaluated).

Checkpoints: `OUT/checkpoint/` holds `config.json` + `model.safetensors` (a loadable model), `optimizer.pt` (tensors
only: `torch.load(weights_only=True)`) and `trainer_state.json` (step, data position, RNG states, run settings). It is
written to a temporary sibling and renamed, every `save_every` steps, at the end, and on Ctrl+C, so a crash leaves
the previous checkpoint whole. Data batches are pure functions of the step (see `data.py`), so `resume=True` restores
weights, optimizer, scaler and RNG states and the loss curve continues exactly as if never interrupted.

Under `torchrun` the model is wrapped in DistributedDataParallel (NCCL on GPUs, gloo on the CPU); each rank reads
its own slice of every global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint

from gpt2tui.atomic import atomic_directory, naming_errors, recover, write_atomic
from gpt2tui.errors import CheckpointError, ConfigError, TrainingError
from gpt2tui.weights import available_memory as _available_memory  # looked up here: tests stand in for it
from gpt2tui.weights import pick_device, write_model_files

CHECKPOINT = "checkpoint"
# What a checkpoint directory holds (a LoRA run's too): all a new save may replace.
CHECKPOINT_FILES = frozenset({"config.json", "model.safetensors", "optimizer.pt", "trainer_state.json",
                              "adapter_config.json", "adapter.safetensors"})
# What a pretraining run directory holds: the checkpoint, token shards, curves, samples, and two links that make the
# directory a model (`pretrain.link_model`). A real config.json there is a model someone saved, not this run's link.
RUN_DIR_ENTRIES = frozenset({CHECKPOINT, "tokens", "metrics.jsonl", "samples.txt", "test-responses.json"})


def is_run_entry(entry: Path) -> bool:
    if entry.name in ("config.json", "model.safetensors"):
        return entry.is_symlink()
    return entry.name in RUN_DIR_ENTRIES
STATE_VERSION = 1
# Dense bf16 tensor-core peak per GPU, for MFU; unknown devices get no MFU figure.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
              "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12}


@dataclass
class TrainConfig:
    max_steps: int
    batch_size: int = 8  # per rank, per micro-batch
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # default: 10% of the steps, at most 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    save_every: int = 500
    sample_every: int = 0  # 0: only at the end
    seed: int = 1337
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    grad_checkpoint: bool = False
    pad_vocab: bool = False  # train with the vocabulary padded to a multiple of 64 (GPT2.pad_vocab_)
    eval_at_start: bool = False  # a step-0 evaluation: where the validation curves start (a new run only)

    @classmethod
    def from_args(cls, args, **given) -> TrainConfig:
        """The config the training commands' shared flags (`training/cli.py`) ask for; `given` sets what a command
        works out itself (the steps of an epoch, its own default learning rate...)."""
        flags = {f: getattr(args, f) for f in cls.__dataclass_fields__ if f not in given and hasattr(args, f)}
        return cls(**flags, **given)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else min(100, self.max_steps // 10)

    def lr_at(self, step: int) -> float:
        """Learning rate for the update that makes step `step + 1`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.max_steps - self.warmup))
        min_lr = self.lr * self.min_lr_ratio
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - min_lr)


# -- distributed ---------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def setup_distributed(device: str | None = None) -> Dist:
    """Join the process group when started by torchrun (RANK / WORLD_SIZE set), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = pick_device(device)
    if world <= 1:
        return Dist(0, 1, want)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want.type == "cuda":
        torch.cuda.set_device(local)
        want = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want.type == "cuda" else "gloo")
    return Dist(rank, world, want)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.on:
        dist.barrier()


# -- pieces --------------------------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decay on matrices (Linear weights, embeddings) only: biases and LayerNorm gains keep their scale."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             fused=device.type == "cuda")


def precision(dtype: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None: plain float32) and whether a grad scaler is needed (fp16 only)."""
    if dtype == "auto":
        if device.type != "cuda":
            return None, False
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if dtype == "float32":
        return None, False
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype], dtype == "float16"


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them (less memory, ~30% more
    compute). Done per instance, so the state-dict names do not change."""
    for block in model.transformer.h:
        inner = block.forward

        def forward(x, cache=None, layer=0, _inner=inner):
            if cache is None and torch.is_grad_enabled():
                return checkpoint(_inner, x, use_reentrant=False)
            return _inner(x, cache, layer)

        block.forward = forward


def _rng_state() -> dict:
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    def tensor(b64):
        return torch.from_numpy(np.frombuffer(base64.b64decode(b64), dtype=np.uint8).copy())

    torch.set_rng_state(tensor(state["torch"]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def check_batch_fits(batch_size: int, T: int, config, device: torch.device) -> None:
    """On the CPU, refuse a micro-batch whose activations alone cannot fit in the free memory. There an allocation too
    big for the machine is granted and the process killed when it touches the pages, with no error to catch (CUDA
    raises one, which the step turns into a message). The estimate is a lower bound, so it never refuses a batch that
    fits: each block keeps at least 14 float32 values per token and channel for its backward (both LayerNorms'
    outputs, q, k and v, the attention's output, the MLP's 4C before and after GELU). The logits never exist whole:
    the fused cross-entropy computes them a chunk at a time (kernels/cross_entropy.py)."""
    if device.type != "cpu":
        return
    free, need = _available_memory(), 14 * 4 * batch_size * T * config.emb_dim * config.n_layers
    if free is not None and need > free:
        raise TrainingError(
            f"a batch of {batch_size} sequences of {T} tokens needs at least {_size(need)} for the activations its "
            f"backward keeps, and {_size(free)} of memory is free; lower --batch-size (raise --grad-accum to keep the "
            f"same effective batch) or --context-length"
        )


def _size(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def flops_per_token(model: torch.nn.Module, T: int) -> float:
    """Training FLOPs per token, as nanoGPT and llm.c count them (PaLM, appendix B): 6 per parameter (forward and
    backward) except the position embedding's (a lookup), plus attention's 12·L·C·T (full, not causal, T×T scores)."""
    c = model.config
    params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * params + 12 * c.n_layers * c.emb_dim * T


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


# -- evaluation ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_batches(model, batches, device: torch.device, autocast_dtype=None, d: Dist | None = None) -> dict:
    """Token-weighted loss, perplexity and next-token accuracy over `(x, y)` batches (-100 targets ignored),
    summed over ranks when distributed."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, tokens, correct
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for x, y in batches:
        x, y = x.to(device), y.to(device)  # (B, T)
        with ctx:
            # The fused cross-entropy, as in training: the (B, T, V) logits never exist; their argmax comes back.
            predictions, loss = model(x, targets=y, return_logits=False)  # (B, T), () mean over kept tokens
        keep = y != -100  # (B, T)
        n = keep.sum().double()
        loss_sum = torch.where(n > 0, loss.double() * n, torch.zeros_like(n))  # a batch of only ignored targets adds 0
        sums += torch.stack([loss_sum, n, ((predictions == y) & keep).sum().double()])
    if d is not None and d.on:
        dist.all_reduce(sums)
    model.train(was_training)
    loss_sum, n, correct = sums.tolist()
    if n == 0:
        return {"loss": float("nan"), "ppl": float("nan"), "acc": float("nan"), "tokens": 0}
    loss = loss_sum / n
    return {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "acc": correct / n, "tokens": int(n)}


class NextToken:
    """The objective of pretraining and fine-tuning: the mean cross-entropy of the next token, with next-token accuracy.

    The Trainer asks its objective for each micro-batch's loss and for each evaluation, so another objective (preference
    tuning's, `dpo.py`) runs through this same loop. `micro` returns the loss, a float64 vector of `n_stats` sums
    (summed over micro-batches and ranks, then turned into record fields by `train_fields`) and the tokens it read."""

    n_stats = 2  # correct predictions, scored tokens

    def batch_shape(self, batch) -> tuple[int, int]:
        return tuple(batch[0].shape)  # (B, T): the rows the memory check counts

    def micro(self, model, batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y = (t.to(device, non_blocking=True) for t in batch)  # (B, T)
        # The fused cross-entropy: the (B, T, V) logits never exist; their argmax comes back for the accuracy.
        predictions, loss = model(x, targets=y, return_logits=False)  # (B, T), ()
        with torch.no_grad():
            keep = y != -100
            correct = ((predictions == y) & keep).sum()
        return loss, torch.stack([correct, keep.sum()]).double(), x.numel()

    def train_fields(self, stats: torch.Tensor) -> dict:
        return {"train_acc": (stats[0] / stats[1].clamp(min=1)).item()}

    def evaluate(self, model, batches, device: torch.device, autocast_dtype=None, d: Dist | None = None) -> dict:
        ev = evaluate_batches(model, batches, device, autocast_dtype, d)
        return {"val_loss": ev["loss"], "val_ppl": ev["ppl"], "val_acc": ev["acc"]}

    def describe(self, fields: dict) -> str:
        return (f"val loss {fields['val_loss']:.4f}, val perplexity {fields['val_ppl']:.2f}, "
                f"val accuracy {fields['val_acc']:.3f}")


# -- checkpoints ---------------------------------------------------------------------------------------------------


def save_training_checkpoint(model, optimizer, scaler, out_dir: Path, state: dict, chat_template=None) -> Path:
    """Model, optimizer and trainer state into `out_dir/checkpoint`, atomically."""
    final = out_dir / CHECKPOINT
    with atomic_directory(final, CHECKPOINT_FILES) as tmp:
        write_model_files(model, tmp, chat_template=chat_template)  # the model's own vocabulary, padding left out
        # Padded rows (`pad_vocab_`) go with the optimizer's state, which holds their moments: a resume is exact.
        padding = model.transformer.wte.weight[model.config.vocab_size :].detach().cpu()
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "wte_padding": padding}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1) + "\n")
    return final


def read_trainer_state(out_dir: Path) -> dict:
    recover(out_dir / CHECKPOINT)  # a save killed between its two renames: its complete new checkpoint is put back
    path = out_dir / CHECKPOINT / "trainer_state.json"
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist; start the run without --resume")
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({str(e)[:120]}); the checkpoint is damaged") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a trainer state; the checkpoint is damaged") from None
    # What resuming reads, checked before any of it is used (a hand-edited or truncated state must not crash later).
    ok = (isinstance(state, dict) and isinstance(state.get("run"), dict) and isinstance(state.get("rng"), list)
          and isinstance(state.get("step"), int) and not isinstance(state.get("step"), bool) and state["step"] >= 0
          and isinstance(state.get("tokens_seen", 0), int))
    if not ok:
        raise CheckpointError(f"{path} lacks a valid run, step or rng entry; the checkpoint is damaged: start a new "
                              "run in another --out")
    return state


def read_metrics(path: Path) -> list[dict]:
    """The step records of a metrics.jsonl: lines that are not a JSON object with an integer step (one cut short by a
    crash or a full disk) are skipped."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
    return records


def check_resume(saved: dict, run: dict, source: Path) -> None:
    """A resumed run must be the same run: same model, data and batch geometry, or its curve would differ."""
    for key in sorted(set(saved) | set(run)):
        if saved.get(key) != run.get(key):
            if key == "model" and isinstance(saved.get(key), dict) and isinstance(run.get(key), dict):
                diff = [k for k in sorted(run[key]) if saved[key].get(k) != run[key].get(k)]
                raise ConfigError(
                    f"{source} was trained with a different model config ("
                    + ", ".join(f"{k}: checkpoint {saved[key].get(k)!r}, now {run[key].get(k)!r}" for k in diff[:3])
                    + "); drop the size flags to resume it, or start a new run in another --out"
                )
            raise ConfigError(
                f"{source} was run with {key}={saved.get(key)!r}, this run asks for {run.get(key)!r}; "
                f"resume with the same settings, or start a new run in another --out"
            )


# -- the loop ------------------------------------------------------------------------------------------------------


class Trainer:
    """Trains `model` on `data` (see `data.py`'s `train_batch` / `eval_batches` / `splits`) into `out_dir`.

    `run_info` is what must not change across a resume (model config, batch geometry, data); `sampler(model, step)`
    returns sample text for the log (rank 0 only); `objective` computes each micro-batch's loss and each evaluation
    (default `NextToken`)."""
    def __init__(self, model, data, cfg: TrainConfig, out_dir: Path, run_info: dict, d: Dist,
                 sampler=None, console=None, chat_template=None, extra_state: dict | None = None, objective=None):
        self.raw, self.data, self.cfg, self.out, self.d = model, data, cfg, Path(out_dir), d
        self.objective = objective or NextToken()
        self.run_info = {**run_info, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                         "seed": cfg.seed, "world_size": d.world}
        self.sampler, self.chat_template, self.extra_state = sampler, chat_template, extra_state or {}
        self.console = console
        self.device = d.device
        self.autocast_dtype, needs_scaler = precision(cfg.dtype, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if needs_scaler else None
        self.step = 0
        self._stop = False
        self._batch_checked = False

    # -- logging -----------------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.d.main and self.console is not None:
            self.console.print(message, highlight=False, soft_wrap=True)

    def _write_metrics(self, record: dict) -> None:
        path = self.out / "metrics.jsonl"
        with naming_errors(path), open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _trim_metrics(self, step: int) -> None:
        """After a resume, drop records past the checkpoint (logged by the interrupted run before it stopped), and any
        line a crash or a full disk cut short. Rewritten atomically: a kill here leaves the old file or the new one."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in read_metrics(path) if r["step"] <= step))

    # -- state -------------------------------------------------------------------------------------------------

    def _state(self, rng: list[dict]) -> dict:
        c = self.cfg
        return {
            "version": STATE_VERSION, "step": self.step, "max_steps": c.max_steps,
            "micro_batches_done": self.step * c.grad_accum,  # the data position: batches are a function of it
            "tokens_seen": self.tokens_seen, "rng": rng, "run": self.run_info, "train_config": asdict(c),
            "time": time.time(), **self.extra_state,
        }

    def _gather_rng(self, rng: dict) -> list[dict]:
        if not self.d.on:
            return [rng]
        out = [None] * self.d.world
        dist.all_gather_object(out, rng)
        return out

    def save(self, rng: list[dict]) -> None:
        if self.d.main:
            save_training_checkpoint(self.raw, self.optimizer, self.scaler, self.out, self._state(rng),
                                     self.chat_template)
        barrier(self.d)

    def _resume(self) -> None:
        state = read_trainer_state(self.out)
        ckpt = self.out / CHECKPOINT
        check_resume(state["run"], self.run_info, ckpt)
        try:
            weights = load_file(str(ckpt / "model.safetensors"), device=str(self.device))
            opt = torch.load(ckpt / "optimizer.pt", map_location=self.device, weights_only=True)
        except Exception as e:
            why = (str(e).splitlines() or [type(e).__name__])[0][:120]
            raise CheckpointError(f"{ckpt} is damaged ({why}); start a new run") from None
        padding, saved = opt.get("wte_padding"), weights.get("transformer.wte.weight")
        pad_rows = 0 if padding is None else padding.shape[0]
        if saved is not None and saved.shape[0] + pad_rows != self.raw.transformer.wte.weight.shape[0]:
            raise CheckpointError(f"{ckpt} was trained {'with' if pad_rows else 'without'} --pad-vocab; resume it "
                                  "the same way")
        if pad_rows:
            weights["transformer.wte.weight"] = torch.cat([saved, padding.to(saved.device)])
        missing, unexpected = self.raw.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{ckpt}: weights do not fit the model ({(missing + unexpected)[:3]})")
        self.optimizer.load_state_dict(opt["optimizer"])
        if self.scaler is not None and opt.get("scaler"):
            self.scaler.load_state_dict(opt["scaler"])
        self.step = state["step"]
        if self.step >= self.cfg.max_steps:
            raise TrainingError(f"{ckpt} is at step {self.step} already, and --max-steps is {self.cfg.max_steps}; "
                                f"raise --max-steps above {self.step} to train further")
        self.tokens_seen = state.get("tokens_seen", 0)
        rngs = state["rng"]
        if self.d.rank < len(rngs):
            try:
                _set_rng_state(rngs[self.d.rank])
            except Exception as e:  # anything from a hand-edited or damaged entry: base64, keys, torch's own checks
                raise CheckpointError(f"{ckpt / 'trainer_state.json'}: its random-number state is damaged "
                                      f"({type(e).__name__}); start a new run in another --out") from None
        else:  # an interrupted distributed run saved only rank 0's state
            torch.manual_seed(self.cfg.seed + self.d.rank + self.step)
        if self.d.main:
            self._trim_metrics(self.step)
        self.log(f"resumed from {ckpt} at step {self.step}")

    # -- training ----------------------------------------------------------------------------------------------

    def _on_sigint(self, signum, frame) -> None:
        if self._stop:  # a second Ctrl+C: stop now
            raise KeyboardInterrupt
        self._stop = True
        self.log("[yellow]Ctrl+C: finishing at this step and saving a checkpoint (press again to abort)[/]")

    def _micro(self, model, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        batch = self.data.train_batch(k, self.d.rank, self.d.world)
        if not self._batch_checked:
            # Once, before the first forward, while the free memory still says what a step can take. (pretrain checks
            # before tokenising; a fine-tune's batches are only as long as their longest example, known from here.)
            check_batch_fits(*self.objective.batch_shape(batch), self.raw.config, self.device)
            self._batch_checked = True
        ctx = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with ctx:
            loss, stats, tokens = self.objective.micro(model, batch, self.device)  # (), (n_stats,)
        scaled = loss / self.cfg.grad_accum
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach(), stats, tokens

    def evaluate(self, split: str) -> dict:
        """The objective's `val_*` record fields on `split`."""
        return self.objective.evaluate(self.raw, self.data.eval_batches(split, self.cfg.eval_batches, self.d.rank,
                                                                        self.d.world), self.device,
                                       self.autocast_dtype, self.d)

    def fit(self, resume: bool = False) -> dict:
        cfg, d = self.cfg, self.d
        self.raw.to(self.device).train()
        if cfg.grad_checkpoint:
            checkpoint_blocks(self.raw)
        if cfg.pad_vocab:
            self.raw.pad_vocab_()
        self.optimizer = make_optimizer(self.raw, cfg, self.device)
        self.tokens_seen = 0
        if resume:
            self._resume()
        elif d.main:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        if not resume:
            torch.manual_seed(cfg.seed + d.rank)  # dropout streams differ per rank
        model = self.raw
        if d.on:
            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            # Batches keep one shape (B, T) through a run, so the graph compiles once, during the first step.
            self.log("torch.compile: the first step compiles the model (a minute or more); later steps run compiled")
            model = torch.compile(model)
        fpt, peak = flops_per_token(self.raw, getattr(self.data, "T", 0) or self.raw.config.context_length), \
            peak_flops(self.device)
        if cfg.eval_at_start and cfg.eval_every and not resume and self.data.splits():
            start = self.evaluate("val")
            if d.main:
                self._write_metrics({"step": 0, **start})
            self.log(f"step 0: {self.objective.describe(start)}")
        handler_set = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if handler_set else None
        progress = self._progress()
        last: dict = {}
        rng = self._gather_rng(_rng_state())  # the state at the start of the step in flight
        try:
            with progress:
                task = progress.add_task("train", total=cfg.max_steps, completed=self.step, info="")
                while self.step < cfg.max_steps:
                    if self._should_stop():
                        raise KeyboardInterrupt
                    t0 = time.perf_counter()
                    lr = cfg.lr_at(self.step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    losses, tokens = [], 0
                    counts = torch.zeros(self.objective.n_stats, dtype=torch.float64, device=self.device)
                    for micro in range(cfg.grad_accum):
                        k = self.step * cfg.grad_accum + micro
                        sync = micro == cfg.grad_accum - 1 or not d.on
                        with (nullcontext() if sync else model.no_sync()):
                            try:
                                loss, c, n = self._micro(model, k)
                            except (RuntimeError, torch.OutOfMemoryError) as e:
                                if not is_oom(e):
                                    raise
                                raise TrainingError(
                                    f"a batch of {cfg.batch_size} sequences does not fit in memory on {self.device}; "
                                    f"lower --batch-size (raise --grad-accum to keep the same effective batch), "
                                    f"lower --context-length, or add --grad-checkpoint"
                                ) from None
                        losses.append(loss)
                        counts += c
                        tokens += n
                    if self.scaler:
                        self.scaler.unscale_(self.optimizer)
                    norm = torch.nn.utils.clip_grad_norm_([p for p in self.raw.parameters() if p.requires_grad],
                                                          cfg.grad_clip)
                    if self.scaler:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    rng = self._gather_rng(_rng_state())  # what the next step starts from (eval uses no RNG)
                    train_loss = torch.stack(losses).mean().double()
                    stats = torch.cat([train_loss.view(1), counts])
                    if d.on:
                        dist.all_reduce(stats)
                        stats[0] /= d.world
                    tokens *= d.world
                    self.tokens_seen += tokens
                    dt = time.perf_counter() - t0
                    record = {"step": self.step, "train_loss": stats[0].item(),
                              **self.objective.train_fields(stats[1:]), "lr": lr,
                              "grad_norm": float(norm), "tokens": self.tokens_seen,
                              "tokens_per_s": round(tokens / dt, 1)}
                    if peak:
                        record["mfu"] = round(fpt * tokens / d.world / dt / peak, 4)
                    if not math.isfinite(record["train_loss"]):
                        # Diverged: every later step and checkpoint would be NaN too. Stop before saving anything, so
                        # the last good checkpoint (if any) stays as it was.
                        if d.main:
                            self._write_metrics(record)
                        raise TrainingError(f"training diverged at step {self.step}: the loss is "
                                            f"{record['train_loss']}; nothing was saved from this step on. Lower --lr "
                                            f"(now {cfg.lr:g}) or --weight-decay, or add warm-up steps")
                    last_step = self.step == cfg.max_steps
                    if cfg.eval_every and (self.step % cfg.eval_every == 0 or last_step) and self.data.splits():
                        ev = self.evaluate("val")
                        record.update(ev)
                        self.log(f"step {self.step}: train loss {record['train_loss']:.4f}, "
                                 f"{self.objective.describe(ev)}")
                    if d.main:
                        self._write_metrics(record)
                    last = record
                    progress.update(task, completed=self.step, info=self._info(record))
                    if self.sampler and d.main and (last_step or cfg.sample_every and self.step % cfg.sample_every == 0):
                        self._sample()
                    if last_step or (cfg.save_every and self.step % cfg.save_every == 0):
                        self.save(rng)
        except KeyboardInterrupt:
            if handler_set:
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # a Ctrl+C during the save aborts it (atomically)
            self.optimizer.zero_grad(set_to_none=True)
            if d.main:
                save_training_checkpoint(self.raw, self.optimizer, self.scaler, self.out, self._state(rng),
                                         self.chat_template)
                self.log(f"[yellow]interrupted:[/] checkpoint of step {self.step} saved in {self.out / CHECKPOINT}; "
                         f"continue with --resume")
            raise
        finally:
            if handler_set:
                signal.signal(signal.SIGINT, previous)
        return last

    def _should_stop(self) -> bool:
        """Ctrl+C reaches every rank at slightly different moments: agree on it, so all stop at the same step."""
        if not self.d.on:
            return self._stop
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        dist.all_reduce(flag)
        return flag.item() > 0

    def _sample(self) -> None:
        was = self.raw.training
        self.raw.eval()
        try:
            text = self.sampler(self.raw, self.step)
        finally:
            self.raw.train(was)
        if text:
            with naming_errors(self.out / "samples.txt"), open(self.out / "samples.txt", "a", encoding="utf-8") as fh:
                fh.write(f"--- step {self.step} ---\n{text}\n")

            self.log(f"[dim]sample at step {self.step}:[/] {escape(text.strip()[:300])}")

    def _progress(self):
        disable = not (self.d.main and self.console is not None and self.console.is_terminal)
        return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=self.console, disable=disable, transient=False)

    @staticmethod
    def _info(r: dict) -> str:
        info = f"loss {r['train_loss']:.3f} · lr {r['lr']:.2e} · {r['tokens_per_s']:,.0f} tok/s"
        if "mfu" in r:
            info += f" · MFU {100 * r['mfu']:.1f}%"
        return info
