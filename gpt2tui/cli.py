"""The `gpt2tui` command.

    gpt2tui [chat] [--model M]     talk to a model: the full-screen app in a terminal, a line-by-line prompt
                                   with --plain or when stdin/stdout is not a terminal
    gpt2tui generate PROMPT        stream a continuation to stdout (PROMPT "-" reads stdin)
    gpt2tui info [--model M]       config, parameters, memory, device, attention backend
    gpt2tui models                 models usable here without a download
    gpt2tui download NAME          fetch official GPT-2 weights into the Hugging Face cache

User errors print one line on stderr and exit 1; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import __version__
from .argtypes import chat_defaults, float_in, int_at_least, non_empty, seed
from .errors import GPT2TUIError
from .training.cli import add_commands as add_training_commands

DEFAULT_MODEL = "gpt2"


def _console(stderr: bool = True):
    from rich.console import Console  # deferred (~40 ms): --help and argparse's errors never need it

    return Console(stderr=stderr, highlight=False)


def _fail(message: str) -> int:
    _console().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from rich.markup import escape  # deferred, as in _console

    _console().print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", "-m", default=os.environ.get("GPT2TUI_MODEL") or DEFAULT_MODEL,
        help="a model directory, a model saved in the gpt2tui models folder, or an official name "
             "(gpt2, gpt2-medium, gpt2-large, gpt2-xl); default: $GPT2TUI_MODEL or gpt2",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if present, else cpu)")
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
    g.add_argument("--max-new-tokens", "-n", type=int_at_least(1), default=None, metavar="N",
                   help="the longest reply, in tokens (default 256)")
    g.add_argument("--temperature", "-t", type=float_in(0.0, 100.0), default=None, metavar="T",
                   help="sampling temperature; 0 is greedy (default 0.7)")
    g.add_argument("--top-k", type=int_at_least(0), default=None, metavar="K", help="0 is off (default 50)")
    g.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=None, metavar="P",
                   help="1 is off (default 0.95)")
    g.add_argument("--repetition-penalty", type=float_in(0.0, 100.0, low_open=True), default=None, metavar="R",
                   help="1 is off (default 1.1)")
    g.add_argument("--seed", type=seed, default=None, metavar="S",
                   help="fixed seed: the same conversation gets the same reply (default: a fresh draw)")


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
            app.call_from_thread(
                app.notify, f"Downloading {official} from the Hugging Face Hub; it is cached for next time.",
                title="First start", timeout=30,
            )
        return chat_session(args, allow_download=True, leave_a_core=True)

    app = ChatApp(args.model, loader=load, settings=chat_defaults(args))
    app.run()
    return app.return_code or 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag answered in one line (argparse's own message, and where the flags are listed)
    instead of the whole usage block above it. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    add_training_commands(sub)  # pretrain, finetune, evaluate: each parser's `run` is its handler
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["chat", *argv]  # `gpt2tui` and `gpt2tui --model M` start a chat
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    if args.command == "chat" and not args.plain and sys.stdin.isatty() and sys.stdout.isatty():
        return _run_app(args)
    from .commands import COMMANDS  # imports torch: only after --help and bad flags have been answered
    from .kernels import AttentionBackendError  # imports torch too

    try:
        return (getattr(args, "run", None) or COMMANDS[args.command])(args) or 0
    except (GPT2TUIError, AttentionBackendError) as e:
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
