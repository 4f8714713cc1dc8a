"""`gpt2tui info`: a model's config, size, memory, device and attention backend, and whether its weight files match
the config, from their headers alone (`--check` reads every value).

It imports torch and the model's code, and nothing of generation, the chat or the tokenizer: it starts within a few
tenths of a second of `import torch` (benchmarks/bench_cli.py).
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from .errors import CheckpointError, ConfigError, ModelNotFoundError
from .kernels import AttentionBackendError, resolve_backend
from .weights import load_weights, pick_device, read_config, read_quantization, resolve


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def cmd_info(args) -> int:
    path = resolve(args.model)
    config, fmt = read_config(path)
    stored = read_quantization(path)
    device = pick_device(args.device)
    n = config.n_params()
    kv_per_token = 2 * config.n_layers * config.emb_dim  # keys and values, every layer
    table = Table(title=f"{args.model}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("path", str(path))
    formats = {"hf": "Hugging Face GPT-2", "lora": "LoRA adapter (merged into its base model when loaded)"}
    table.add_row("format", formats.get(fmt, "gpt2tui checkpoint"))
    for key, value in config.to_dict().items():
        table.add_row(key, str(value))
    table.add_row("head_dim", str(config.head_dim))
    table.add_row("parameters", f"{n:,} ({n / 1e6:.1f}M, output head tied to wte)")
    packed = (
        config.n_layers * 12 * config.emb_dim**2 + config.vocab_size * config.emb_dim
    )  # what quantisation packs
    table.add_row(
        "weights fp32 / bf16 / int8", f"{_gib(4 * n)} / {_gib(2 * n)} / {_gib(packed + 4 * (n - packed))}"
    )
    if stored:
        table.add_row("stored as", f"{stored} (projections and token embedding; the rest float32)")
    table.add_row(
        "KV cache, full window fp32 / bf16",
        f"{_gib(4 * kv_per_token * config.context_length)} / {_gib(2 * kv_per_token * config.context_length)} per sequence",
    )
    table.add_row("device", str(device))
    try:
        backend = resolve_backend(config.attn_backend, device, config.head_dim, torch.float32)
    except AttentionBackendError as e:
        backend = f"unavailable: {e}"
    table.add_row("attention backend", f"{backend} (asked: {config.attn_backend})")
    # The checks a load makes, on the weight files' headers only: a missing, truncated or mismatched file shows here,
    # not first in the middle of a chat.
    try:
        load_weights(path, shapes_only=True)
        if getattr(args, "check", False):
            load_weights(path)  # every value read, and checked to be finite
    except (CheckpointError, ModelNotFoundError, ConfigError):
        table.add_row("weights", "[red]cannot be loaded[/] (below)")
        Console(highlight=False).print(table)
        raise
    if getattr(args, "check", False):
        table.add_row(
            "weights", "every tensor present, with the config's shapes; every value read and finite"
        )
    else:
        table.add_row(
            "weights", "every tensor present, with the config's shapes (values not read: --check reads them)"
        )
    Console(highlight=False).print(table)
    return 0
