"""`gpt2tui evaluate --task TASK` and `--harness TASKS`: the standard benchmarks, beside `evaluate.py`'s data splits.

`--task` runs one of gpt2tui's own tasks (`gpt2tui.evals`: hellaswag, lambada, wikitext-2, wikitext-103) on a local
copy (`--data FILE`) or the dataset downloaded through `datasets`; `--harness` runs lm-evaluation-harness tasks through
the adapter (`gpt2tui.evals.lm_eval_adapter`, the `eval` extra). Either prints a table and writes the result, with the
settings used, as JSON to `--out` (`TASK.json`, or `harness.json`), whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gpt2tui.atomic import ensure_writable, naming_errors, write_atomic
from gpt2tui.errors import ConfigError, DataError
from gpt2tui.evals.tasks import run_task
from gpt2tui.quant import quantization_of

from .evaluate import load_any


def run(args) -> int:
    con = Console(stderr=True, highlight=False)
    out = ensure_writable(Path(args.out).expanduser(), "--out")  # before the evaluation, not after it
    if args.data and len(args.data) > 1:
        raise DataError(f"--data: a task reads one file; got {len(args.data)} ({', '.join(args.data)})")
    data = args.data[0] if args.data else None
    if args.harness:
        return _harness(args, data, out, con)
    model, tokenizer, model_dir = load_any(args.model, args.device, args.quantize)
    report = run_task(
        args.task, model, tokenizer, data, args.limit, args.batch_size, args.stride, console=con
    )
    report = {"model": str(model_dir), **report}
    report["settings"]["quantization"] = quantization_of(model)

    table = Table(title=f"{args.task}: {args.model} ({report['examples']:,} examples)")
    for col in ("metric", "value", "GPT-2 124M, published"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, value in report["metrics"].items():
        theirs = report["published_gpt2_124M"].get(name)
        table.add_row(name, f"{value:.4f}", "" if theirs is None else f"{theirs:.4f}")
    Console(highlight=False).print(table)
    path = out / f"{args.task}.json"
    with naming_errors(path):
        write_atomic(path, json.dumps(report, indent=2) + "\n")
    con.print(f"wrote {path}")
    return 0


def _harness(args, data: str | None, out: Path, con: Console) -> int:
    if data is not None:
        raise DataError(
            "--data is for --task; a harness task names its own data in its YAML (see --include-path)"
        )
    try:
        from gpt2tui.evals.lm_eval_adapter import run_harness  # optional: needs the eval extra
    except ImportError as e:
        raise ConfigError(
            f"--harness needs lm-evaluation-harness ({e.name} is missing); pip install 'gpt2tui[eval]'"
        ) from e
    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    if args.include_path and not Path(args.include_path).expanduser().is_dir():
        raise DataError(
            f"--include-path {args.include_path}: no such folder; pass the folder of your task YAML files"
        )
    try:
        results = run_harness(
            args.model,
            tasks,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            include_path=args.include_path and str(Path(args.include_path).expanduser()),
            num_fewshot=args.num_fewshot,
        )
    except KeyError as e:  # the harness's word for a task it does not know
        raise DataError(
            f"--harness: {e.args[0] if e.args else e}; `lm_eval ls tasks` lists the tasks, or pass --include-path DIR for "
            "your own YAML tasks"
        ) from e
    report = {
        "model": args.model,
        "tasks": tasks,
        "results": results["results"],
        "versions": results.get("versions"),
        "n-shot": results.get("n-shot"),
        "settings": {
            "limit": args.limit,
            "batch_size": args.batch_size,
            "num_fewshot": args.num_fewshot,
            "include_path": args.include_path,
            "harness_model": "gpt2tui",
        },
    }
    table = Table(title=f"lm-evaluation-harness: {args.model}")
    for col in ("task", "metric", "value"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for task, metrics in results["results"].items():
        for name, value in metrics.items():
            if isinstance(value, float) and "stderr" not in name:
                table.add_row(task, name, f"{value:.4f}")
    Console(highlight=False).print(table)
    path = out / "harness.json"
    with naming_errors(path):
        write_atomic(path, json.dumps(report, indent=2, default=str) + "\n")
    con.print(f"wrote {path}")
    return 0
