"""The evaluation tasks by name, and one call that runs a task on a model: `run_task`.

Each task module reads its data into examples (`load`) and turns them into scores (`evaluate`) through a `scorer`,
a function from `(context, continuation)` token pairs to `Score`s. Here the scorer is the model's
(`scoring.score`) with a progress bar; the parity tests pass transformers' instead, so a task's arithmetic is checked
apart from the model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gpt2tui.errors import DataError

from . import hellaswag, lambada, wikitext
from .scoring import Pair, Score, score

TASKS = ("hellaswag", "lambada", "wikitext-2", "wikitext-103")


def load(task: str, data: str | None, limit: int | None) -> list:
    if task == "hellaswag":
        examples = hellaswag.load(data, limit)
    elif task == "lambada":
        examples = lambada.load(data, limit)
    elif task in wikitext.HUB:
        examples = wikitext.load(data, limit, task)
    else:
        raise DataError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if not examples:
        raise DataError(f"{data or task}: no {task} examples in it")
    return examples


def evaluate(
    task: str,
    examples: list,
    tokenizer,
    scorer: Callable[[list[Pair]], list[Score]],
    context_length: int,
    stride: int | None = None,
) -> dict:
    if task == "hellaswag":
        return hellaswag.evaluate(examples, tokenizer, scorer)
    if task == "lambada":
        return lambada.evaluate(examples, tokenizer, scorer)
    return wikitext.evaluate(examples, tokenizer, scorer, context_length, stride)


def published(task: str) -> dict:
    """GPT-2 124M's published figures for this task's metrics (README, evaluation section)."""
    module = {"hellaswag": hellaswag, "lambada": lambada}.get(task)
    if module is not None:
        return module.PUBLISHED["gpt2"]
    return wikitext.PUBLISHED["gpt2"] if task == "wikitext-2" else {}


def _hub_name(task: str) -> str:
    name, config, split = {"hellaswag": hellaswag.HUB, "lambada": lambada.HUB}.get(task) or wikitext.HUB[task]
    return f"datasets: {name}{f' ({config})' if config else ''}, split {split}"


def model_scorer(
    model, batch_size: int, console: Console | None = None
) -> Callable[[list[Pair]], list[Score]]:
    """`scoring.score` on this model, with a progress bar on `console` (none when it is None)."""

    def scorer(pairs: list[Pair]) -> list[Score]:
        if console is None:
            return score(model, pairs, batch_size)
        columns = (
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("requests"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            job = bar.add_task("scoring", total=len(pairs))
            return score(model, pairs, batch_size, progress=lambda n: bar.advance(job, n))

    return scorer


def run_task(
    task: str,
    model,
    tokenizer,
    data: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    stride: int | None = None,
    console: Console | None = None,
) -> dict:
    """The task's result on `model`: its metrics, the GPT-2 figures published for them, and the settings used."""
    examples = load(task, data, limit)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        result = evaluate(
            task,
            examples,
            tokenizer,
            model_scorer(model, batch_size, console),
            model.config.context_length,
            stride,
        )
    finally:
        model.train(was_training)
    return {
        "task": task,
        **result,
        "published_gpt2_124M": published(task),
        "settings": {
            "data": data or _hub_name(task),
            "limit": limit,
            "batch_size": batch_size,
            "context_length": model.config.context_length,
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "seconds": round(time.perf_counter() - start, 2),
        },
    }
