"""One message of the conversation: who wrote it, the text (a reply as Markdown, streamed in as it is generated),
and notes about it (context left out, stopped, cut off)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from .code_block import ReplyMarkdown

FINISH_NOTES = {
    "cancelled": "stopped",
    "max_tokens": "cut off: max new tokens reached (Ctrl+S to raise it)",
    "context_full": "cut off: the context window is full",
    "error": "ended by an error",
}


class MessageView(Vertical):
    """A user message (plain text, exactly as typed) or a reply (Markdown with highlighted code blocks)."""

    def __init__(
        self, role: str, content: str = "", finish_reason: str | None = None, author: str = "",
        message_id: int | None = None, branch: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(classes=role)
        self.message_id = message_id  # in the store; None while it is not saved
        self.branch = branch  # (n, of): this message is alternative n of its siblings
        self.role = role
        self.content = content
        self.finish_reason = finish_reason
        self.author = author or ("You" if role == "user" else "Assistant")
        # What generating it measured, when it was generated in this run: its speed, and (prompt, reply) tokens.
        self.tokens_per_s: float | None = None
        self.generated: tuple[int, int] | None = None
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._author_line(), classes="author", markup=False)
        yield Static("", classes="notice", markup=False)
        if self.role == "user":
            yield Static(self.content, classes="body", markup=False)
        else:
            yield ReplyMarkdown(self.content, classes="body")
        yield Static("", classes="finish", markup=False)
        numbers = Static("", classes="numbers", markup=False)
        numbers.display = False  # until the counts are known
        yield numbers

    def on_mount(self) -> None:
        self.query_one(".notice", Static).display = False
        self._show_finish()

    def _author_line(self) -> str:
        if self.branch is None or self.branch[1] < 2:
            return self.author
        return f"{self.author}  ‹ {self.branch[0]}/{self.branch[1]} ›"

    def set_branch(self, message_id: int | None, branch: tuple[int, int] | None) -> None:
        """Which stored message this is, and which of its alternatives ("2/3" beside the author)."""
        self.message_id, self.branch = message_id, branch
        if self.is_mounted:
            self.query_one(".author", Static).update(self._author_line())

    def set_notice(self, text: str) -> None:
        notice = self.query_one(".notice", Static)
        notice.update(text)
        notice.display = bool(text)

    def set_numbers(self, text: str) -> None:
        """The message's token counts (and a reply's speed), under it."""
        numbers = self.query_one(".numbers", Static)
        numbers.update(text)
        numbers.display = bool(text)

    # -- streaming -------------------------------------------------------------------------------------------------

    def start_stream(self) -> None:
        """From here on `append` adds to the Markdown in place: only the last block is parsed again, and fragments that
        arrive faster than the screen redraws are merged, so a long reply costs no more per token than a short one."""
        self.add_class("streaming")
        self._stream = Markdown.get_stream(self.query_one(Markdown))

    async def append(self, text: str) -> None:
        self.content += text
        if self._stream is not None:
            await self._stream.write(text)

    async def finish(self, finish_reason: str | None) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.remove_class("streaming")
        self.finish_reason = finish_reason
        self._show_finish()

    def _show_finish(self) -> None:
        note = FINISH_NOTES.get(self.finish_reason or "")
        finish = self.query_one(".finish", Static)
        finish.update(f"[{note}]" if note else "")
        finish.display = bool(note)
        self.set_class(self.finish_reason == "cancelled", "stopped")
