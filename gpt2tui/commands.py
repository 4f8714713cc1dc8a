"""What each `gpt2tui` subcommand does; `cli.py` parses the flags and handles errors."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import repl
from .argtypes import chat_defaults
from .config import GPT2Config
from .errors import CheckpointError, ConfigError, ModelNotFoundError
from .generate import stream
from .kernels import AttentionBackendError, resolve_backend
from .session import ChatSession, ChatSettings
from .weights import (
    OFFICIAL,
    download,
    load_model,
    load_weights,
    local_models,
    models_dir,
    pick_device,
    read_config,
    read_quantization,
    resolve,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _err() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def _status(message: str):
    console = _err()
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        yield


def _load(args):
    with _status(f"Loading {escape(args.model)}…"):
        return load_model(args.model, device=args.device, dtype=_DTYPES.get(args.dtype), quantize=args.quantize)


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def cmd_generate(args) -> int:
    if args.draft_tokens is not None and not (args.draft or args.prompt_lookup):
        raise ConfigError("--draft-tokens needs --draft MODEL or --prompt-lookup")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model, tokenizer = _load(args)
    draft = _draft(args, model)
    # Built before anything is printed: a draft that cannot serve this model fails without output.
    reply = stream(model, tokenizer, prompt, **_sampling_kwargs(args), draft=draft, draft_tokens=args.draft_tokens)
    out = sys.stdout
    if args.echo:
        out.write(prompt)
    for delta in reply:
        out.write(delta)
        out.flush()
    out.write("\n")
    out.flush()
    if reply.finish_reason == "context_full":  # fewer tokens than -n asked for: say why, on stderr
        _err().print(f"[dim](stopped early: the model's context window of {model.config.context_length} tokens is "
                     "full)[/]", highlight=False)
    if reply.speculation is not None:
        _err().print(f"speculation: {reply.speculation}", markup=False, highlight=False, soft_wrap=True)
    return 0


def _draft(args, model):
    """The drafter `--draft` or `--prompt-lookup` asks for (None: plain decoding); a draft model is loaded on the
    target's device with the target's --dtype and --quantize."""
    if args.prompt_lookup:
        return "prompt-lookup"
    if args.draft is None:
        return None
    with _status(f"Loading the draft model {escape(args.draft)}…"):
        # The same precision flags as the target: an int8 target drafts with an int8 draft.
        draft, _ = load_model(args.draft, device=model.device, dtype=_DTYPES.get(args.dtype), quantize=args.quantize)
    if draft.config.vocab_size != model.config.vocab_size:
        raise ConfigError(f"the draft model {args.draft} has a vocabulary of {draft.config.vocab_size:,} tokens and "
                          f"{args.model} one of {model.config.vocab_size:,}; a draft model must share its vocabulary")
    return draft


def _sampling_kwargs(args) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )


def chat_session(args, allow_download: bool = True, leave_a_core: bool = False):
    """The chat session for `gpt2tui chat`'s model flags. `leave_a_core`: for the full-screen app, whose UI thread
    redraws while the model decodes on the CPU: with every core in torch's thread pool, a pool thread that the OS
    parks behind the UI stalls each op for a time slice (seen: 9 tokens/s instead of 180 on two cores)."""
    session = ChatSession.load(args.model, device=args.device, dtype=_DTYPES.get(args.dtype),
                               allow_download=allow_download, quantize=args.quantize)
    if leave_a_core and session.model.device.type == "cpu" and torch.get_num_threads() > 1:
        torch.set_num_threads(torch.get_num_threads() - 1)
    return session


def cmd_chat(args) -> int:
    """The line-by-line chat (`--plain`, or stdin/stdout not a terminal); `cli` starts the full-screen app itself."""
    defaults = ChatSettings(**chat_defaults(args))  # a bad combination fails here, before the model loads
    with _status(f"Loading {escape(args.model)}…"):
        session = chat_session(args)
    return repl.run(session, defaults)


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
    packed = config.n_layers * 12 * config.emb_dim**2 + config.vocab_size * config.emb_dim  # what quantisation packs
    table.add_row("weights fp32 / bf16 / int8", f"{_gib(4 * n)} / {_gib(2 * n)} / {_gib(packed + 4 * (n - packed))}")
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
        table.add_row("weights", "every tensor present, with the config's shapes; every value read and finite")
    else:
        table.add_row("weights", "every tensor present, with the config's shapes (values not read: --check reads "
                                 "them)")
    Console(highlight=False).print(table)
    return 0


def cmd_models(args) -> int:
    console = Console(highlight=False)
    found = local_models()
    if not found:
        console.print(
            f"No models yet. Download one with [bold]gpt2tui download gpt2[/], or save one to {escape(str(models_dir()))}."
        )
        return 0
    table = Table(title="Local models", title_justify="left")
    for col in ("name", "source", "parameters", "layers × width", "context", "path"):
        table.add_column(col)
    for m in found:
        cfg: GPT2Config | None = m.get("config")
        if cfg is None:
            table.add_row(m["name"], m["source"], f"[red]unreadable: {escape(m['error'])}[/]", "", "", str(m["path"]))
            continue
        table.add_row(
            m["name"], m["source"], f"{cfg.n_params() / 1e6:.1f}M", f"{cfg.n_layers} × {cfg.emb_dim}",
            str(cfg.context_length), escape(str(m["path"])),
        )
    console.print(table)
    return 0


def cmd_download(args) -> int:
    _err().print(f"Downloading {args.name} ({OFFICIAL[args.name]}) from the Hugging Face Hub…")
    path = download(args.name)
    Console(highlight=False).print(f"{args.name} is ready: {escape(str(path))}")
    return 0


COMMANDS = {
    "chat": cmd_chat,
    "generate": cmd_generate,
    "info": cmd_info,
    "models": cmd_models,
    "download": cmd_download,
}
