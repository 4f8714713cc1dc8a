"""One message of the conversation: who wrote it, the text (a reply as Markdown, streamed in as it is generated),
and notes about it (context left out, stopped, cut off)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

FINISH_NOTES = {
    "cancelled": "stopped",
    "max_tokens": "cut off: max new tokens reached (Ctrl+S to raise it)",
    "context_full": "cut off: the context window is full",
    "error": "ended by an error",
}


class MessageView(Vertical):
    """A user message (plain text, exactly as typed) or a reply (Markdown with highlighted code blocks)."""

    def __init__(self, role: str, content: str = "", finish_reason: str | None = None, author: str = "") -> None:
        super().__init__(classes=role)
        self.role = role
        self.content = content
        self.finish_reason = finish_reason
        self.author = author or ("You" if role == "user" else "Assistant")
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.author, classes="author", markup=False)
        yield Static("", classes="notice", markup=False)
        if self.role == "user":
            yield Static(self.content, classes="body", markup=False)
        else:
            yield Markdown(self.content, classes="body")
        yield Static("", classes="finish", markup=False)

    def on_mount(self) -> None:
        self.query_one(".notice", Static).display = False
        self._show_finish()

    def set_notice(self, text: str) -> None:
        notice = self.query_one(".notice", Static)
        notice.update(text)
        notice.display = bool(text)

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
