"""The `gpt2tui` command.

    gpt2tui [chat] [--model M]     talk to a model: the full-screen app in a terminal, a line-by-line prompt
                                   with --plain or when stdin/stdout is not a terminal
    gpt2tui generate PROMPT        stream a continuation to stdout (PROMPT "-" reads stdin)
    gpt2tui info [--model M]       config, parameters, memory, device, attention backend
    gpt2tui models                 models usable here without a download
    gpt2tui download NAME          fetch official GPT-2 weights into the Hugging Face cache
    gpt2tui serve [--model M]      an OpenAI-compatible HTTP server (needs the serve extra: gpt2tui[serve])

Usage errors (a mistyped command or flag, a bad flag value) print one line, with a "did you mean" where a known name
is close, and exit 2; bad input (a missing model, a corrupt file, a path that cannot be written) prints one line and
exits 1. Nothing prints a traceback for either.

Start-up cost: `models` never imports torch (it reads config files and safetensors headers); `info` imports torch and
the model's code, not the generation, chat or tokenizer modules.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import warnings

from . import __version__
from .argtypes import (
    DEVICE_HELP,
    chat_defaults,
    device,
    float_in,
    int_at_least,
    non_empty,
    port,
    seed,
    setting,
)
from .errors import GPT2TUIError
from .prefs import load_prefs, shown_path
from .setting_fields import FIELDS
from .training.cli import add_commands as add_training_commands
from .transfer_cli import add_commands as add_transfer_commands

DEFAULT_MODEL = "gpt2"


def _console(stderr: bool = True):
    from rich.console import Console  # deferred (~40 ms): --help and argparse's errors never need it

    return Console(stderr=stderr, highlight=False)


def _fail(message: str) -> int:
    from rich.markup import escape  # deferred, as in _console

    # Escaped: a message quoting user input or `gpt2tui[serve]` must print as written, never as Rich markup.
    _console().print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from rich.markup import escape  # deferred, as in _console

    _console().print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", "-m", default=None,
        help="a model directory, a model saved in the gpt2tui models folder, or an official name "
             "(gpt2, gpt2-medium, gpt2-large, gpt2-xl); default: $GPT2TUI_MODEL, else the model in "
             f"{shown_path()}, else gpt2",
    )
    p.add_argument("--device", type=device, default=None,
                   help=f"{DEVICE_HELP} (default: cuda if present, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weights' precision (default: bfloat16 on a GPU that has it, else float32); on the CPU, "
                        "bfloat16 stores the weights in bfloat16 and computes in float32")
    p.add_argument("--quantize", choices=["int8", "bfloat16"], default=None,
                   help="pack the weights as they load: int8 (per-channel, a quarter of float32's memory) or bfloat16; "
                        "activations stay float32. A quantised checkpoint loads quantised without it")


def _add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", "-n", type=int_at_least(0), default=max_new_tokens, metavar="N",
                   help=f"tokens to generate at most (default {max_new_tokens})")
    g.add_argument("--temperature", "-t", type=float_in(0.0, 100.0), default=0.8, metavar="T",
                   help="sampling temperature; 0 is greedy (default 0.8)")
    g.add_argument("--top-k", type=int_at_least(0), default=None, metavar="K", help="sample from the K most likely tokens")
    g.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=None, metavar="P",
                   help="sample from the smallest set of tokens whose probability reaches P")
    g.add_argument("--repetition-penalty", type=float_in(0.0, 100.0, low_open=True), default=1.0, metavar="R",
                   help="above 1 discourages repeating tokens (default 1.0: off)")
    g.add_argument("--seed", type=seed, default=None, metavar="S", help="random seed, for repeatable sampling")
    g.add_argument("--stop", action="append", type=non_empty, default=[], metavar="TEXT",
                   help="end the reply at this text (repeatable)")


def _add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain", action="store_true",
                   help="a line-by-line prompt instead of the full-screen app (automatic when not in a terminal)")
    g = p.add_argument_group("settings of new conversations (each conversation keeps its own; the app edits them)")
    g.add_argument("--system", dest="system_prompt", default=None, metavar="TEXT",
                   help="system prompt (default: the chat template's own)")
    # Bounds and words from setting_fields, as the app's settings dialog and /set have them.
    for flags, name, metavar, default in [
        (("--max-new-tokens", "-n"), "max_new_tokens", "N", "the room left in the window, at most 512"),
        (("--temperature", "-t"), "temperature", "T", "0.7"),
        (("--top-k",), "top_k", "K", "50"),
        (("--top-p",), "top_p", "P", "0.95"),
        (("--repetition-penalty",), "repetition_penalty", "R", "1.1"),
        (("--seed",), "seed", "S", "a fresh draw each reply"),
    ]:
        field = FIELDS[name]
        hint = f"; {field.hint}" if field.hint else ""
        g.add_argument(*flags, type=setting(name), default=None, metavar=metavar,
                       help=f"{field.label.lower()}, {field.range_text()}{hint} (default: {default})")


def _run_app(args: argparse.Namespace) -> int:
    """The full-screen chat. Imported without torch, so it draws at once; the model loads in its worker."""
    from .tui import ChatApp  # deferred: Textual is for the app alone, not for --help or the other commands

    def load():
        # Deferred: both import torch, which loads in this worker while the app's first frame is already drawn.
        from .commands import chat_session
        from .weights import pending_download

        official = pending_download(args.model)
        if official is not None:
            # huggingface_hub's progress bars write to stderr, under the app's screen: the notice and the spinner
            # stand in for them.
            from huggingface_hub.utils import disable_progress_bars  # deferred: only for a first download

            disable_progress_bars()
            # On the status line, beside the spinner: a toast would linger over the window after a failed download.
            app.call_from_thread(app.chat.loading_state,
                                 f"Downloading {official} from the Hugging Face Hub (once: it is cached)…")
        return chat_session(args, allow_download=True, leave_a_core=True)

    # The model picker starts from the flags' device and weights, and loads a switched model the same way.
    app = ChatApp(args.model, loader=load, settings=chat_defaults(args), device=args.device, dtype=args.dtype,
                  quantize=args.quantize)
    app.run()
    return app.return_code or 0


def _did_you_mean(word: str, known: list[str]) -> str:
    near = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error answered in one line (what was wrong, the closest known name when one is close,
    and where the flags are listed) instead of the whole usage block above it, exit code 2. Subcommands' parsers are
    of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _check_value(self, action, value):
        # argparse's own check, reworded: "unknown command 'infp'; did you mean info?" (Python 3.14 has a
        # suggest_on_error of its own; this runs on 3.10 to 3.13 too).
        if action.choices is not None and value not in action.choices:
            known = [str(c) for c in action.choices]
            command = isinstance(action, argparse._SubParsersAction)
            raise argparse.ArgumentError(
                None if command else action,  # None: no "argument COMMAND:" before the message
                f"unknown {'command' if command else 'value'} {value!r} (choose from {', '.join(known)})"
                f"{_did_you_mean(str(value), known)}")
        super()._check_value(action, value)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # The flags of the command that was given: a misspelt one is compared with those, not the top level's.
            commands = getattr(self, "commands", {})
            parser = commands.get(getattr(parsed, "command", None), self)
            flag = extras[0].split("=", 1)[0]
            known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            if flag.startswith("-"):
                parser.error(f"unknown option {flag!r}{_did_you_mean(flag, known)}")
            parser.error(f"unexpected argument {' '.join(extras)!r}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpt2tui",
        description="GPT-2 from scratch: chat with it, generate text, manage weights.",
        epilog="Run `gpt2tui COMMAND --help` for a command's options. With no command, gpt2tui starts a chat.",
    )
    parser.add_argument("--version", action="version", version=f"gpt2tui {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("chat", help="talk to a model (the default command)",
                       description="Talk to a model. In a terminal this is the full-screen chat app (F1 lists its "
                                   "keys); with --plain, or when stdin or stdout is not a terminal, a line-by-line "
                                   "prompt where Ctrl+C stops a reply and Ctrl+D (or /quit) leaves. Conversations "
                                   "are saved in $XDG_DATA_HOME/gpt2tui/chats.db.")
    _add_model_args(p)
    _add_chat_args(p)

    p = sub.add_parser("generate", help="stream a continuation of PROMPT to stdout",
                       description="Stream the model's continuation of PROMPT to stdout.")
    p.add_argument("prompt", metavar="PROMPT", help='the text to continue; "-" reads it from stdin')
    _add_model_args(p)
    _add_sampling_args(p, max_new_tokens=100)
    p.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    g = p.add_argument_group("speculative decoding (the same tokens when greedy, the same distribution when sampling)")
    drafter = g.add_mutually_exclusive_group()
    drafter.add_argument("--draft", metavar="MODEL", default=None,
                         help="a smaller model with the same vocabulary drafts tokens that --model checks several at a "
                              "time (gpt2 for gpt2-xl); loaded on the same device and dtype")
    drafter.add_argument("--prompt-lookup", action="store_true",
                         help="draft by copying what followed earlier occurrences of the last few tokens in the prompt "
                              "and the reply; no second model")
    g.add_argument("--draft-tokens", type=int_at_least(1), default=None, metavar="K",
                   help="tokens drafted per pass of --model (default 4 with --draft, 8 with --prompt-lookup)")

    p = sub.add_parser("info", help="show a model's config, size, memory, device and attention backend",
                       description="Show a model's config, parameter count, memory, device and attention backend. "
                                   "The weights are checked against the config from their files' headers alone; "
                                   "--check also reads every value.")
    _add_model_args(p)
    p.add_argument("--check", action="store_true",
                   help="also read every weight and check that none is NaN or infinite (reads the whole model)")

    sub.add_parser("models", help="list models usable here without a download",
                   description="List models saved in the gpt2tui models folder and official models already downloaded.")

    p = sub.add_parser("download", help="download official GPT-2 weights",
                       description="Download official GPT-2 weights (config and safetensors) from the Hugging Face "
                                   "Hub into its local cache.")
    p.add_argument("name", choices=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"], help="which size")

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a model over an OpenAI-compatible HTTP API (/v1/models, /v1/completions, "
                                   "/v1/chat/completions, /health, /metrics), batching concurrent requests. Listens "
                                   "on 127.0.0.1 unless told otherwise. Needs the serve extra: "
                                   "pip install 'gpt2tui[serve]'.")
    _add_model_args(p)
    g = p.add_argument_group("network and safety")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface, "
                        "which wants --api-key)")
    g.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000)")
    g.add_argument("--api-key", default=os.environ.get("GPT2TUI_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every request (default: $GPT2TUI_API_KEY, which "
                        "keeps the key out of the process list; none: no key)")
    g.add_argument("--cors-origin", action="append", type=non_empty, default=[], metavar="ORIGIN",
                   help="let web pages from this origin call the API (repeatable; default: none)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int_at_least(1), default=16, metavar="N",
                   help="requests decoded together in one step (default 16); each holds a window of KV cache")
    g.add_argument("--max-queue", type=int_at_least(1), default=64, metavar="N",
                   help="requests waiting for a place in the batch before new ones get 429 (default 64)")
    g.add_argument("--prefill-chunk", type=int_at_least(1), default=256, metavar="T",
                   help="prompt tokens prefilled per step, so a long prompt never stalls the replies in flight "
                        "for long (default 256)")
    add_training_commands(sub)  # pretrain, finetune, dpo, evaluate: each parser's `run` is its handler
    add_transfer_commands(sub)  # export, import: the same
    parser.commands = sub.choices  # for the "did you mean" of a misspelt flag (_Parser.parse_args)
    return parser


def _apply_prefs(args: argparse.Namespace) -> list[str]:
    """Fill in what config.toml sets and the command line does not: the model (after $GPT2TUI_MODEL). Returns the
    file's problems, one line each. Chat settings from it are applied by the chat itself (app or plain), below the
    flags and a conversation's own settings."""
    if not hasattr(args, "model") or args.model is not None and args.command != "chat":
        return []
    prefs, problems = load_prefs()
    if args.model is None:
        args.model = os.environ.get("GPT2TUI_MODEL") or prefs.model or DEFAULT_MODEL
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["chat", *argv]  # `gpt2tui` and `gpt2tui --model M` start a chat
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    problems = _apply_prefs(args)
    if args.command == "chat" and not args.plain and sys.stdin.isatty() and sys.stdout.isatty():
        return _run_app(args)  # the app reads config.toml itself, and shows its problems in the window
    for problem in problems:
        _show_warning(problem, UserWarning, "", 0)
    # Each command imports what it needs, after --help and bad flags have been answered: `models` no torch at all,
    # `info` torch and the model's code but no generation or chat (start-up figures: benchmarks/bench_cli.py).
    if args.command == "models":
        from .listing import cmd_models

        handler, user_errors = cmd_models, (GPT2TUIError,)
    elif args.command in ("export", "import"):  # conversations only: no torch either
        handler, user_errors = args.run, (GPT2TUIError,)
    else:
        from .kernels import AttentionBackendError  # imports torch

        if args.command == "info":
            from .model_info import cmd_info as handler
        else:
            from .commands import COMMANDS

            handler = getattr(args, "run", None) or COMMANDS[args.command]
        user_errors = (GPT2TUIError, AttentionBackendError)
    try:
        return handler(args) or 0
    except user_errors as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gpt2tui generate ... | head` closing the pipe early is not an error
        sys.stderr.close()
        return 0
    except OSError as e:
        # The file system said no (permissions, a full disk, a file where a folder belongs): the user's to fix, and
        # the message names the path. What was written is left whole (every output goes through atomic writes).
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}; check the path, its permissions and the free space")


if __name__ == "__main__":
    sys.exit(main())
