"""What each `gpt2tui` subcommand does; `cli.py` parses the flags and handles errors."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
from rich.console import Console
from rich.markup import escape

from . import repl
from .argtypes import chat_defaults
from .errors import ConfigError
from .generate import stream
from .listing import cmd_models
from .model_info import cmd_info
from .prefs import load_prefs
from .session import ChatSession, ChatSettings
from .weights import OFFICIAL, download, load_model

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
    # pack: on the CPU float32 weights load in the packed layout, the same numbers decoded 1.7x faster at batch 1
    # (benchmarks/RESULTS.md, inference).
    with _status(f"Loading {escape(args.model)}…"):
        return load_model(args.model, device=args.device, dtype=_DTYPES.get(args.dtype), quantize=args.quantize,
                          pack=True)


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
        draft, _ = load_model(args.draft, device=model.device, dtype=_DTYPES.get(args.dtype), quantize=args.quantize,
                              pack=True)
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
    """The line-by-line chat (`--plain`, or stdin/stdout not a terminal); `cli` starts the full-screen app itself.
    New conversations start with the flags over config.toml's [chat] over the built-in defaults; a saved one keeps
    its own settings, under the flags (`cli` has shown config.toml's problems already)."""
    flags = chat_defaults(args)
    defaults = ChatSettings(**{**load_prefs()[0].chat, **flags})  # a bad combination fails here, before the load
    with _status(f"Loading {escape(args.model)}…"):
        session = chat_session(args)
    return repl.run(session, defaults, overrides=flags)


def cmd_download(args) -> int:
    _err().print(f"Downloading {args.name} ({OFFICIAL[args.name]}) from the Hugging Face Hub…")
    path = download(args.name)
    Console(highlight=False).print(f"{args.name} is ready: {escape(str(path))}")
    return 0


def cmd_serve(args) -> int:
    """`gpt2tui serve`: load the model, then serve it under uvicorn until SIGTERM or Ctrl+C."""
    try:
        # Deferred: FastAPI and uvicorn are the serve extra, which no other command needs.
        from .serve.engine import Engine, served_name
        from .serve.server import run
        from .serve.settings import ServeSettings
    except ImportError as e:
        if (e.name or "").startswith("gpt2tui."):  # our own module: the install is stale, not missing an extra
            raise ConfigError(f"this gpt2tui install is incomplete ({e.name} is missing): install it again "
                              "(pip install -e . in a checkout, or make install)") from None
        raise ConfigError(f"gpt2tui serve needs the serve extra ({e.name} is not installed): "
                          "pip install 'gpt2tui[serve]'") from None
    settings = ServeSettings(host=args.host, port=args.port, api_key=args.api_key or None,
                             cors_origins=tuple(args.cors_origin))
    if settings.exposed_without_key:
        _err().print(f"[yellow]warning:[/] listening on {escape(args.host)} without --api-key: anyone who can reach "
                     "this address can use the model. The conversation history routes are off; pass --api-key KEY "
                     "(or set $GPT2TUI_API_KEY) to require a key.", soft_wrap=True)
    model, tokenizer = _load(args)  # packed as it is read: the engine would pack it anyway
    engine = Engine(model, tokenizer, model_id=served_name(args.model), max_batch=args.max_batch,
                    max_queue=args.max_queue, prefill_chunk=args.prefill_chunk, model_name=args.model)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    _err().print(f"Serving {escape(engine.model_id)} at http://{escape(host)}:{settings.port}/v1 "
                 f"({args.max_batch} rows per batch, {args.max_queue} waiting at most"
                 f"{', key required' if settings.api_key else ''}). Ctrl+C stops it.", soft_wrap=True)
    run(engine, settings)
    return 0


COMMANDS = {
    "chat": cmd_chat,
    "generate": cmd_generate,
    "info": cmd_info,
    "models": cmd_models,
    "download": cmd_download,
    "serve": cmd_serve,
}
