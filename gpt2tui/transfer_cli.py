"""The `export` and `import` subcommands of `gpt2tui`: conversations to and from files (`gpt2tui.transfer`).

`add_commands(subparsers)` registers them; each parser's `run` default is its handler. Nothing here needs torch,
and the store and the format load only when a handler runs.
"""

from __future__ import annotations

import argparse
import sys

from .argtypes import int_at_least


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return "md" if (args.output or "").lower().endswith((".md", ".markdown")) else "json"


def _run_export(args: argparse.Namespace) -> int:
    # Deferred, as the training commands' handlers: building the parser (every `gpt2tui` start) needs neither.
    from .store import ChatStore, free_name
    from .transfer import default_export_name, export_file, export_json, export_markdown

    fmt = _format(args)
    with ChatStore() as store:
        if args.output == "-":
            if args.conversation is not None:
                store.get(args.conversation)  # a missing one: said in one line, before anything is printed
            text = (
                export_json(store, args.conversation)
                if fmt == "json"
                else export_markdown(store, args.conversation)
            )
            sys.stdout.write(text)
            return 0
        output = args.output or str(free_name(default_export_name(args.conversation, fmt)))
        if args.conversation is not None:
            store.get(args.conversation)
        written = export_file(store, output, fmt, args.conversation)
        count = 1 if args.conversation is not None else len(store.conversations())
    print(f"exported {count} conversation{'s' if count != 1 else ''} to {written}", file=sys.stderr)
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from .store import ChatStore  # deferred, as in _run_export
    from .transfer import import_file

    with ChatStore() as store:
        ids = import_file(store, args.file)
        where = store.path
    shown = ", ".join(map(str, ids[:10])) + (", …" if len(ids) > 10 else "")
    print(
        f"imported {len(ids)} conversation{'s' if len(ids) != 1 else ''} (ids {shown}) into {where}",
        file=sys.stderr,
    )
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write conversations to a JSON or Markdown file",
        description="Write one conversation, or all, to a new file: JSON keeps every branch (and `gpt2tui import` "
        "reads it back), Markdown holds the path shown. An existing file is never replaced.",
    )
    p.add_argument(
        "conversation",
        nargs="?",
        type=int_at_least(1),
        default=None,
        metavar="ID",
        help="the conversation's id (`/list` in the plain chat shows them); default: every conversation",
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="PATH",
        help="a new file, or a folder to write the default name in (chats.json, chat-ID.json); "
        "- writes to stdout (default: the current directory)",
    )
    p.add_argument(
        "--format",
        "-f",
        choices=["json", "md"],
        default=None,
        help="json (every branch, importable) or md (default: md for a .md output, else json)",
    )
    p.set_defaults(run=_run_export)

    p = sub.add_parser(
        "import",
        help="add conversations from a JSON file",
        description="Add the conversations of a `gpt2tui export` file (every branch comes back, under the same ids "
        "when they are free), or of fine-tuning records: a JSON list, or JSON lines, of "
        '{"messages": [{"role", "content"}, ...]}. The whole file is checked first and imported in one '
        "transaction: all of it, or (with a one-line error naming the place) none.",
    )
    p.add_argument("file", metavar="FILE", help="the .json or .jsonl file")
    p.set_defaults(run=_run_import)
