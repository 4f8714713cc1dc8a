"""`gpt2tui models`: the models usable here without a download. It reads config files and directory listings only, and
never imports torch, so it answers as fast as Python starts."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import GPT2Config
from .model_files import local_models, models_dir


def cmd_models(args) -> int:
    console = Console(highlight=False)
    found = local_models()
    if not found:
        console.print(
            f"No models yet. Download one with [bold]gpt2tui download gpt2[/], or save one to {escape(str(models_dir()))}."
        )
        return 0
    table = Table(title="Local models", title_justify="left")
    # The name (what --model takes) and the path stay whole, over several lines if they must: cut short, they are
    # useless; the figures take what room is left.
    table.add_column("name", overflow="fold")
    for col in ("source", "parameters", "layers × width", "context"):
        table.add_column(col)
    table.add_column("path", overflow="fold")
    for m in found:
        cfg: GPT2Config | None = m.get("config")
        if cfg is None:
            table.add_row(
                m["name"], m["source"], f"[red]unreadable: {escape(m['error'])}[/]", "", "", str(m["path"])
            )
            continue
        table.add_row(
            m["name"],
            m["source"],
            f"{cfg.n_params() / 1e6:.1f}M",
            f"{cfg.n_layers} × {cfg.emb_dim}",
            str(cfg.context_length),
            escape(str(m["path"])),
        )
    console.print(table)
    return 0
