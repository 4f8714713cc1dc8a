"""`gpt2tui chat --plain`: the chat as a line-by-line prompt, for pipes, scripts and terminals without the full-screen
app. Same `ChatSession`, same `ChatStore` (conversations started here show up in the app), same streaming.

Replies go to stdout, one per message; everything else (the banner, notices, stats) goes to stderr, so
`printf 'Hi\\nAnd then?\\n' | gpt2tui chat` prints just the replies. Each input line is one message; a message that
opens with \"\"\" goes on until a line ends with \"\"\". In a terminal the prompt is a line editor (`repl_input.py`:
history across runs, Alt+Enter for a new line, Ctrl+C clears the line), and a line ending in a backslash continues
on the next line. Ctrl+C stops a reply (it is kept, marked stopped), Ctrl+D or /quit leaves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from .chat import ChatError, turns_left_out
from .repl_input import FENCE, LineEditor, history_path
from .session import ChatSession, ChatSettings, ReplyStream
from .setting_fields import FIELDS
from .store import ChatStore, ExportFolderMissingError, StoreError, StoreWriteError, free_name

TITLE_LENGTH = 48

HELP = """\
Commands:
  /new               start a new conversation
  /list              the saved conversations
  /open N            continue conversation N
  /regen             regenerate the last reply
  /set NAME=VALUE    change a setting of this conversation, e.g. /set temperature=0.5 (/set alone shows them)
  /system TEXT       set the system prompt (/system alone clears it)
  /export [PATH]     write this conversation as Markdown (default: a file in the current directory)
  /help              this list
  /quit              leave (so does Ctrl+D)
Ctrl+C stops a reply; at the prompt it clears the line. Up and Down recall earlier messages (kept between runs).
A new line: Alt+Enter, or end the line with \\. A message of many lines: start it with \"\"\" and end it with \"\"\"."""


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def _parse_setting(settings: ChatSettings, assignment: str) -> ChatSettings:
    name, sep, text = assignment.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in FIELDS:
        raise ChatError(f"use /set NAME=VALUE with NAME one of {', '.join(FIELDS)}")
    return settings.replace(**{name: FIELDS[name].parse(text)})  # bounds and words shared with the app's dialog


class Repl:
    def __init__(
        self,
        session: ChatSession,
        store: ChatStore,
        defaults: ChatSettings,
        read: Callable[[str], str] = input,
        out: TextIO | None = None,
        interactive: bool = False,
        overrides: dict | None = None,
    ) -> None:
        """`overrides`: the chat flags, which win over a saved conversation's own settings when it is opened."""
        self.session = session
        self.store = store
        self.defaults = defaults
        self.overrides = dict(overrides or {})
        self.read = read
        self.out = out or sys.stdout
        self.err = Console(stderr=True, highlight=False)
        self.interactive = interactive
        self.conversation_id: int | None = None
        self.title: str | None = None
        # Why the conversation in memory is not all in the database (a full disk, a database another process holds),
        # or None. It is written whole once a write goes through again (`_catch_up`), or said lost on quit.
        self.unsaved: str | None = None
        self.session.settings = defaults

    # -- the loop ---------------------------------------------------------------------------------------------------

    def run(self) -> int:
        info = self.session.info()
        where = "Chats are kept until you quit" if self.store.in_memory else \
            f"Chats are saved in {escape(str(self.store.path))}"
        self.err.print(
            f"[bold]{escape(info['model'])}[/] on {info['device']} · {info['parameters'] / 1e6:.0f}M parameters · "
            f"attention: {info['attention']} · template: {info['template']}\n"
            f"[dim]{where}. /help lists commands; Ctrl+C stops a reply, "
            f"Ctrl+D or /quit leaves.[/]"
        )
        while True:
            try:
                line = self._read_message()
            except EOFError:
                break
            except KeyboardInterrupt:
                self.err.print()
                continue
            text = line.strip()
            if not text:
                continue  # an empty message is not sent
            if text.startswith("/"):
                if self._command(text) is False:
                    break
                continue
            self._send(text)
        if self.unsaved is not None and not self._catch_up():
            self.err.print(f"[red]not saved: {escape(self.unsaved)}; the last messages of this conversation are lost[/]")
            return 1
        return 0

    def _read_message(self) -> str:
        prompt = "you> " if self.interactive else ""
        lines = [self.read(prompt)]
        while self.interactive and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(self.read("...  "))
        if lines[0].lstrip().startswith(FENCE):
            # A block: the line editor hands it over whole; read line by line, it goes on to the closing fence.
            text = lines[0].lstrip()[len(FENCE) :]
            while not text.rstrip().endswith(FENCE):
                try:
                    text += "\n" + self.read("...  " if self.interactive else "")
                except EOFError:
                    break  # input ended inside the block: what came is the message
            lines = [text.rstrip().removesuffix(FENCE)]
        # Bytes that are not UTF-8 reach Python as lone surrogates (under a C locale's surrogateescape): they cannot be
        # tokenised or stored, so each becomes U+FFFD, as a terminal shows it.
        return "\n".join(lines).encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    # -- messages ---------------------------------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        dangling = (self.session.messages or [{}])[-1].get("role") == "user"
        try:
            reply = self.session.reply(text)
        except ChatError as e:
            self.err.print(f"[red]{escape(str(e))}[/]")
            return
        if self.title is None:
            self.title = _title(text)
        if self.unsaved is None:
            try:
                if self.conversation_id is None:
                    settings = self.session.settings.to_dict()
                    self.conversation_id = self.store.create(self.title, self.session.model_name, settings).id
                if dangling:
                    self.store.append_message(self.conversation_id, "assistant", "", "cancelled")
                self.store.append_message(self.conversation_id, "user", text)
                self.store.append_message(self.conversation_id, "assistant", "")
            except StoreWriteError as e:
                self._not_saved(e)  # the reply goes on; the conversation is kept in memory
            except StoreError as e:
                reply.close()
                self.err.print(f"[red]not sent, the chat could not be saved: {escape(str(e))}[/]")
                return
        self._stream(reply)

    def _stream(self, reply: ReplyStream) -> None:
        prompt = reply.prompt
        if prompt.turns_dropped:
            self.err.print(f"[yellow]note: {turns_left_out(prompt.turns_dropped)} of the prompt (the conversation "
                           f"outgrew the {self.session.context_length}-token window)[/]")
        if prompt.cut_tokens:
            self.err.print(f"[yellow]note: your message was too long: its first {prompt.cut_tokens} tokens were cut[/]")
        if self.interactive:
            self.out.write("bot> ")
            self.out.flush()
        try:
            for delta in reply:
                self.out.write(delta)
                self.out.flush()
        except KeyboardInterrupt:
            reply.close()  # records the partial reply as stopped
        finally:
            if reply.finish_reason == "cancelled":
                self.out.write(" [stopped]")
            self.out.write("\n")
            self.out.flush()
            if self.unsaved is None:
                try:
                    self.store.update_last_message(self.conversation_id, reply.text, reply.finish_reason)
                except StoreWriteError as e:
                    self._not_saved(e)
                except StoreError as e:
                    self.err.print(f"[red]the reply could not be saved: {escape(str(e))}[/]")
            else:
                self._catch_up()
        stats = reply.stats
        if self.interactive and stats is not None:
            rate = f" · {stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else ""
            self.err.print(f"[dim]{stats.new_tokens} tokens{rate} · context {stats.context_used}/"
                           f"{stats.context_length} · {stats.finish_reason}[/]")

    def _not_saved(self, e: StoreWriteError) -> None:
        if self.unsaved != str(e):
            self.err.print(f"[yellow]{escape(str(e))}[/]")
        self.unsaved = str(e)

    def _catch_up(self) -> bool:
        """Write the whole conversation in memory to the database; True once nothing is left unsaved."""
        if self.unsaved is None:
            return True
        try:
            self.conversation_id = self.store.save_conversation(
                self.conversation_id, self.title or "Chat", self.session.model_name, self.session.settings.to_dict(),
                self.session.messages)
        except StoreError:
            return False
        self.unsaved = None
        self.err.print("[dim]Saved: the chat history could be written again.[/]")
        return True

    def _can_leave(self) -> bool:
        """Whether the conversation may be left for another: not while part of it is only in memory."""
        if self._catch_up():
            return True
        self.err.print(f"[yellow]this conversation is not saved yet ({escape(self.unsaved)}); it is kept here until "
                       f"it can be written, and /quit leaves without it[/]")
        return False

    # -- commands ---------------------------------------------------------------------------------------------------

    def _command(self, text: str) -> bool | None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name in ("/help", "/?"):
            self.err.print(escape(HELP))
        elif name == "/new":
            if not self._can_leave():
                return None
            if self.conversation_id is not None:
                self.store.release(self.conversation_id)
            self.conversation_id = self.title = None
            self.session.clear()
            self.session.settings = self.defaults
            self.err.print("[dim]New conversation.[/]")
        elif name == "/list":
            self._list()
        elif name == "/open":
            self._open(rest)
        elif name in ("/regen", "/retry"):
            self._regenerate()
        elif name == "/set":
            self._set(rest)
        elif name == "/system":
            self._save_settings(self.session.settings.replace(system_prompt=rest))
            self.err.print("[dim]System prompt " + ("set." if rest else "cleared.") + "[/]")
        elif name == "/export":
            self._export(rest)
        else:
            self.err.print(f"[red]unknown command {escape(name)}[/]; /help lists them")
        return None

    def _list(self) -> None:
        conversations = self.store.conversations()
        if not conversations:
            self.err.print("[dim]No saved conversations yet.[/]")
        for c in conversations:
            mark = "*" if c.id == self.conversation_id else " "
            self.err.print(f"{mark}{c.id:>4}  {escape(c.title)}")

    def _open(self, rest: str) -> None:
        if not self._can_leave():
            return
        try:
            conversation = self.store.get(int(rest))
        except ValueError:
            self.err.print("[red]use /open N, with N from /list[/]")
            return
        except StoreError as e:
            self.err.print(f"[red]{escape(str(e))}[/]")
            return
        try:
            # The flags win over the conversation's own settings, which win over config.toml and the defaults.
            settings = ChatSettings.from_dict({**conversation.settings, **self.overrides}) if conversation.settings \
                else self.defaults
            self.session.set_messages([m.to_chat() for m in conversation.messages if m.role != "system"])
        except (ChatError, TypeError) as e:
            self.err.print(f"[red]conversation {conversation.id} cannot be continued: {escape(str(e))}[/]")
            return
        self.session.settings = settings
        if self.conversation_id is not None and self.conversation_id != conversation.id:
            self.store.release(self.conversation_id)
        if not self.store.claim(conversation.id):
            self.err.print(f"[yellow]“{escape(conversation.title)}” is open in another gpt2tui, which writes it: here "
                           "it is read-only; /new starts a conversation you can write[/]")
        self.conversation_id, self.title = conversation.id, conversation.title
        self.err.print(f"[dim]Continuing “{escape(conversation.title)}” ({len(conversation.messages)} messages).[/]")

    def _regenerate(self) -> None:
        had_reply = (self.session.messages or [{}])[-1].get("role") == "assistant"
        try:
            reply = self.session.regenerate()
        except ChatError as e:
            self.err.print(f"[red]{escape(str(e))}[/]")
            return
        if self.conversation_id is not None and self.unsaved is None:
            try:
                if had_reply:  # the new reply is a sibling of the old one, which stays a branch (as in the app)
                    parent = self.store.get(self.conversation_id).messages[-1].parent_id
                    self.store.append_message(self.conversation_id, "assistant", "", parent_id=parent)
                else:
                    self.store.append_message(self.conversation_id, "assistant", "")
            except StoreWriteError as e:
                self._not_saved(e)
        self._stream(reply)

    def _set(self, rest: str) -> None:
        if not rest:
            for key, value in self.session.settings.to_dict().items():
                self.err.print(f"  {key} = {value!r}")
            return
        try:
            self._save_settings(_parse_setting(self.session.settings, rest))
        except ChatError as e:
            self.err.print(f"[red]{escape(str(e))}[/]")

    def _save_settings(self, settings: ChatSettings) -> None:
        self.session.settings = settings
        if self.conversation_id is not None and self.unsaved is None:
            try:
                self.store.save_settings(self.conversation_id, settings.to_dict())
            except StoreWriteError as e:
                self._not_saved(e)

    def _export(self, rest: str) -> None:
        if self.conversation_id is None:
            self.err.print("[dim]Nothing to export yet.[/]")
            return
        # A string, not a Path, so that `dir/` keeps the separator that says "into this folder".
        where = os.path.join(os.getcwd(), os.path.expanduser(rest)) if rest else \
            str(free_name(f"chat-{self.conversation_id}.md").absolute())
        try:
            try:
                written = self.store.export_markdown_file(self.conversation_id, where)
            except ExportFolderMissingError as e:
                if not self._confirm(f"{e.folder} does not exist; create it? [y/N] "):
                    raise
                written = self.store.export_markdown_file(self.conversation_id, where, create_folder=True)
        except ExportFolderMissingError as e:
            self.err.print(f"[red]not exported: {escape(str(e))}[/]")
            return
        except (OSError, StoreError) as e:
            self.err.print(f"[red]could not write {escape(where)}: {escape(str(e))}[/]")
            return
        self.err.print(f"Exported to {escape(str(written))}")

    def _confirm(self, question: str) -> bool:
        """A yes/no question at the prompt; without a terminal (input piped in) nothing is asked, and the answer is
        no: the next line of input is a message, not an answer."""
        if not self.interactive:
            return False
        try:
            return self.read(question).strip().lower() in ("y", "yes")
        except (EOFError, KeyboardInterrupt):
            return False


def run(session: ChatSession, defaults: ChatSettings, store_path: str | Path | None = None,
        interactive: bool | None = None, overrides: dict | None = None) -> int:
    """The prompt loop on stdin/stdout until end of input or /quit. A corrupt chat database is moved aside with a
    warning (the caller shows warnings); with one that cannot be used at all, the chat goes on in memory and says so."""
    if interactive is None:
        interactive = sys.stdin.isatty()
    try:
        store = ChatStore(store_path)
    except StoreError as e:
        Console(stderr=True, highlight=False).print(
            f"[yellow]warning:[/] {escape(str(e))}; this chat is kept only until you quit", soft_wrap=True)
        store = ChatStore.temporary()
    read = LineEditor(history_path()) if interactive else input
    with store:
        return Repl(session, store, defaults, read=read, interactive=interactive, overrides=overrides).run()

