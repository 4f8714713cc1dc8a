"""Quality is measured, not assumed: what int8 and bfloat16 weights (`gpt2tui.quant`) change in a model's outputs.

No official weights can be downloaded here, so the benchmark trains its own model first: a small GPT-2 (4 layers,
4 heads, width 256, window 128, GPT-2's vocabulary), float32, with plain AdamW, on public-domain text (Edith Wharton's
"The Verdict" and the text of the instruction set in ../shared/data), the first 90% of the tokens for training and the
last 10% held out. Then for each kind, on a quantised copy and the held-out text:

- each packed layer's relative error, ‖y_q − y_f‖ / ‖y_f‖, on the inputs the float model gives it (max and mean over
  the block projections and the output head);
- top-1 agreement of the next-token predictions at every held-out position, and the held-out loss against float's;
- greedy decoding from held-out prompts: the fraction of generated tokens equal to float's at the same position.

The bar (asserted): top-1 agreement ≥ 0.99 and held-out loss at most 1% above float's, for int8 and bfloat16 alike.
If the official `gpt2` is in the local Hugging Face cache, the same figures and bar are measured on it too.

    make bench    # or: .venv/bin/python -m pytest benchmarks/bench_quality.py --benchmark-only -s
    # quick (a barely trained model): BENCH_TRAIN_STEPS=10 .venv/bin/python -m pytest benchmarks/bench_quality.py \\
    #                                     --benchmark-only -s

BENCH_TRAIN_STEPS (default 150: 3 to 6 minutes on two CPU cores) sets the training steps; GPT2TUI_SHARED_DATA the
folder holding the-verdict.txt and instruction-data.json (default: ../shared/data beside the repository).
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2tui import GPT2, GPT2Config, SamplingParams, Tokenizer, load_weights, quant
from gpt2tui.generate import Decoder
from gpt2tui.weights import cached_official

CONFIG = GPT2Config(vocab_size=50257, context_length=128, emb_dim=256, n_heads=4, n_layers=4, drop_rate=0.0)
TRAIN_STEPS = int(os.environ.get("BENCH_TRAIN_STEPS", "150"))
BATCH = 8
LR = 2e-3
OFFICIAL_WINDOW = 256  # held-out windows for the official model: long enough to use its context, short enough to run
TOP1_BAR, LOSS_BAR = 0.99, 0.01
GREEDY_PROMPTS, GREEDY_PROMPT_TOKENS, GREEDY_NEW_TOKENS = 4, 32, 64
EOS = 50256


# -- the corpus and the model trained on it ---------------------------------------------------------------------------


def _data_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repository
    return Path(os.environ.get("GPT2TUI_SHARED_DATA") or default)


def _corpus(data: Path) -> str:
    examples = json.loads((data / "instruction-data.json").read_text(encoding="utf-8"))
    texts = ["\n\n".join(v for v in (e["instruction"], e["input"], e["output"]) if v) for e in examples]
    return "\n\n".join([(data / "the-verdict.txt").read_text(encoding="utf-8"), *texts])


def _train(ids: torch.Tensor, steps: int) -> tuple[GPT2, float]:
    """The float32 model after `steps` AdamW steps on random windows of `ids`, and its last training loss."""
    torch.manual_seed(0)
    model = GPT2(CONFIG).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    T = CONFIG.context_length
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - T - 1, (BATCH,)).tolist()
        batch = torch.stack([ids[s : s + T + 1] for s in starts])  # (B, T+1)
        _, loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval(), loss.item()


def _windows(ids: torch.Tensor, length: int) -> torch.Tensor:
    """Non-overlapping windows `(W, length + 1)` of `ids`: inputs and their next-token targets."""
    n = (len(ids) - 1) // length
    return torch.stack([ids[i * length : i * length + length + 1] for i in range(n)])


@pytest.fixture(scope="module")
def corpus() -> dict:
    data = _data_dir()
    if not (data / "the-verdict.txt").is_file() or not (data / "instruction-data.json").is_file():
        pytest.skip(f"no the-verdict.txt and instruction-data.json in {data}: set GPT2TUI_SHARED_DATA to their folder")
    ids = torch.tensor(Tokenizer().encode(_corpus(data)))
    cut = int(0.9 * len(ids))
    return {"train": ids[:cut], "held_out": ids[cut:]}


@pytest.fixture(scope="module")
def trained(corpus) -> dict:
    start = time.perf_counter()
    model, train_loss = _train(corpus["train"], TRAIN_STEPS)
    return {"model": model, "train_loss": round(train_loss, 4), "train_s": round(time.perf_counter() - start, 1)}


# -- the comparison ---------------------------------------------------------------------------------------------------


def _error_hooks(reference: GPT2, packed: GPT2, sums: dict[str, list[float]]) -> list:
    """Hooks on the float model that run each packed layer on the same input as its float twin and add up
    ‖y_q − y_f‖² and ‖y_f‖² per layer. The output head's input is the final LayerNorm's output."""

    def accumulate(name, y_f, y_q):
        sums.setdefault(name, [0.0, 0.0])
        sums[name][0] += (y_q - y_f).double().pow(2).sum().item()
        sums[name][1] += y_f.double().pow(2).sum().item()

    def on_linear(name):
        layer = packed.get_submodule(name)
        return lambda module, args, y_f: accumulate(name, y_f, layer(args[0]))

    def on_head(module, args, h):
        accumulate("head", reference.head(h), packed.head(h))

    linears = [n for n in quant.quantized_modules(packed) if n != quant.EMBEDDING_NAME]
    hooks = [reference.get_submodule(n).register_forward_hook(on_linear(n)) for n in linears]
    return [*hooks, reference.transformer.ln_f.register_forward_hook(on_head)]


@torch.inference_mode()
def compare_outputs(reference: GPT2, packed: GPT2, windows: torch.Tensor) -> dict:
    """Per-layer relative errors, top-1 agreement and held-out losses of `packed` against `reference`."""
    sums: dict[str, list[float]] = {}
    hooks = _error_hooks(reference, packed, sums)
    agree, losses = 0, [0.0, 0.0]
    try:
        for batch in windows.split(BATCH):
            x, y = batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)
            logits = [reference(x), packed(x)]  # 2 × (B, T, V)
            agree += (logits[0].argmax(-1) == logits[1].argmax(-1)).sum().item()
            for i, lg in enumerate(logits):
                losses[i] += F.cross_entropy(lg.flatten(0, 1), y.flatten(), reduction="sum").item()
    finally:
        for h in hooks:
            h.remove()
    errors = {name: (d / r) ** 0.5 for name, (d, r) in sums.items()}
    positions = windows[:, 1:].numel()
    loss_f, loss_q = losses[0] / positions, losses[1] / positions
    return {
        "layer_rel_error_max": round(max(errors.values()), 6),
        "layer_rel_error_mean": round(sum(errors.values()) / len(errors), 6),
        "worst_layer": max(errors, key=errors.get),
        "top1_agreement": round(agree / positions, 5),
        "loss_float": round(loss_f, 5),
        "loss_quantized": round(loss_q, 5),
        "loss_rel_change": round((loss_q - loss_f) / loss_f, 6),
        "positions": positions,
    }


def _greedy(model: GPT2, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(max_new_tokens=GREEDY_NEW_TOKENS, temperature=0, stop_at_eos=False)
    out: list[list[int]] = [[] for _ in prompts]
    for step in Decoder(model, prompts, params, eos_id=EOS):
        for row, token in step.items():
            out[row].append(token)
    return out


def greedy_agreement(reference: GPT2, packed: GPT2, held_out: torch.Tensor) -> dict:
    """Greedy continuations of prompts spread over the held-out text: tokens equal at the same position."""
    stride = len(held_out) // GREEDY_PROMPTS
    prompts = [held_out[i * stride : i * stride + GREEDY_PROMPT_TOKENS].tolist() for i in range(GREEDY_PROMPTS)]
    pairs = list(zip(_greedy(reference, prompts), _greedy(packed, prompts), strict=True))
    same = sum(a == b for f, q in pairs for a, b in zip(f, q, strict=True))
    return {"greedy_token_agreement": round(same / (len(prompts) * GREEDY_NEW_TOKENS), 4),
            "greedy_identical_rows": f"{sum(f == q for f, q in pairs)}/{len(pairs)}"}


def measure(reference: GPT2, kind: str, held_out: torch.Tensor, window: int) -> dict:
    packed = quant.quantize_model(copy.deepcopy(reference), kind)
    return {**compare_outputs(reference, packed, _windows(held_out, window)),
            **greedy_agreement(reference, packed, held_out)}


def _bar_failures(figures: dict) -> list[str]:
    failures = []
    if figures["top1_agreement"] < TOP1_BAR:
        failures.append(f"top-1 agreement {figures['top1_agreement']} < {TOP1_BAR}")
    if figures["loss_rel_change"] > LOSS_BAR:
        failures.append(f"held-out loss {figures['loss_rel_change']:+.2%} against float, more than +{LOSS_BAR:.0%}")
    return failures


def _official(kind: str, held_out: torch.Tensor) -> dict | str:
    path = cached_official("gpt2")
    if path is None:
        return "official weights: not available here"
    return measure(load_weights(path), kind, held_out, OFFICIAL_WINDOW)


@pytest.mark.slow
@pytest.mark.parametrize("kind", quant.KINDS)
def test_quantized_quality(benchmark, corpus, trained, kind):
    benchmark.group = "quality-trained-small"
    figures = benchmark.pedantic(lambda: measure(trained["model"], kind, corpus["held_out"], CONFIG.context_length),
                                 rounds=1, iterations=1)
    official = _official(kind, corpus["held_out"])
    benchmark.extra_info.update(figures, kind=kind, official=official, train_steps=TRAIN_STEPS,
                                train_loss=trained["train_loss"], train_s=trained["train_s"],
                                train_tokens=len(corpus["train"]), held_out_tokens=len(corpus["held_out"]))
    print(f"\n{kind}: {json.dumps(figures)}\n{kind} official gpt2: {json.dumps(official)}")
    failures = _bar_failures(figures)
    if isinstance(official, dict):
        failures += [f"official gpt2: {f}" for f in _bar_failures(official)]
    assert not failures, f"{kind} misses the bar: " + "; ".join(failures)
