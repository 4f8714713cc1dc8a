"""Training curves as PDF/PNG files, with matplotlib's Agg backend (no display, no pyplot global state).

Curves come from a run's `metrics.jsonl`: train loss per step (with a moving average when there are many steps),
validation loss where evaluated, and a second x axis of tokens seen, as the seed's plots have. Without a history,
the evaluated splits are shown as bars.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _curves(history: list[dict], train_key: str, val_key: str, ylabel: str, title: str):
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    train = [(r["step"], r[train_key]) for r in history if r.get(train_key) is not None]
    val = [(r["step"], r[val_key]) for r in history if r.get(val_key) is not None]
    if train:
        steps, values = zip(*train, strict=False)
        window = max(1, len(values) // 50)
        ax.plot(steps, values, color="tab:blue", alpha=0.3 if window > 1 else 1.0, label=f"training {ylabel.lower()}")
        if window > 1:
            ax.plot(steps, _smooth(list(values), window), color="tab:blue", label=f"training (moving average of {window})")
    if val:
        steps, values = zip(*val, strict=False)
        ax.plot(steps, values, "o-" if len(val) < 30 else "-", color="tab:orange", label=f"validation {ylabel.lower()}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    tokens = [(r["step"], r["tokens"]) for r in history if r.get("tokens") is not None]
    if tokens:
        top = ax.twiny()  # tokens seen, on the same scale as the steps
        top.plot([t for _, t in tokens], [0] * len(tokens), alpha=0)
        top.set_xlabel("tokens seen")
        lo, hi = ax.get_xlim()
        (s0, t0), (s1, t1) = tokens[0], tokens[-1]
        per_step = (t1 - t0) / (s1 - s0) if s1 > s0 else t1 / max(s1, 1)
        top.set_xlim(lo * per_step, hi * per_step)
    return fig


def _bars(results: dict[str, dict], key: str, ylabel: str, title: str):
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    names = [n for n, r in results.items() if r.get(key) is not None]
    ax.bar(names, [results[n][key] for n in names], color=["tab:blue", "tab:orange", "tab:green"][: len(names)])
    for i, n in enumerate(names):
        ax.annotate(f"{results[n][key]:.3f}", (i, results[n][key]), ha="center", va="bottom")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def loss_plot(history: list[dict] | None, results: dict[str, dict], out_dir: Path) -> list[Path]:
    """`loss-plot.pdf` and `loss-plot.png`: the training curves, or the evaluated losses without a history."""
    if history and any("train_loss" in r for r in history):
        fig = _curves(history, "train_loss", "val_loss", "Loss", "Training and validation loss")
    else:
        fig = _bars(results, "loss", "Loss", "Loss per split")
    paths = [out_dir / "loss-plot.pdf", out_dir / "loss-plot.png"]
    for p in paths:
        fig.savefig(p, dpi=150)
    return paths


def accuracy_plot(history: list[dict] | None, results: dict[str, dict], out_dir: Path) -> Path:
    """`accuracy-plot.pdf`: next-token accuracy over training, or per split without a history."""
    if history and any("train_acc" in r for r in history):
        fig = _curves(history, "train_acc", "val_acc", "Accuracy", "Next-token accuracy")
    else:
        fig = _bars(results, "acc", "Accuracy", "Next-token accuracy per split")
    path = out_dir / "accuracy-plot.pdf"
    fig.savefig(path)
    return path


def preference_plots(history: list[dict] | None, results: dict[str, dict], out_dir: Path) -> list[Path]:
    """`margin-plot.pdf`/`.png` and `preference-accuracy-plot.pdf`/`.png`: a DPO run's reward margin and preference
    accuracy over its steps (from its metrics.jsonl), or per split without such a history."""
    paths = []
    for stem, key, label, title in (("margin-plot", "margin", "Reward margin", "Reward margin (chosen − rejected)"),
                                    ("preference-accuracy-plot", "pref_acc", "Preference accuracy",
                                     "Preference accuracy (chosen reward higher)")):
        if history and any(f"train_{key}" in r for r in history):
            fig = _curves(history, f"train_{key}", f"val_{key}", label, title)
        else:
            fig = _bars(results, key, label, f"{title} per split")
        for suffix in (".pdf", ".png"):
            paths.append(out_dir / f"{stem}{suffix}")
            fig.savefig(paths[-1], dpi=150)
    return paths
