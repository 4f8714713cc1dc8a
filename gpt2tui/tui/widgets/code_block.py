"""A reply's Markdown, whose code blocks carry their number: "copy code block 2" then says which block it means."""

from __future__ import annotations

from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownFence


class NumberedFence(MarkdownFence):
    """A code block titled with its number in the message (and its language), counted in document order: the order
    `clipboard.code_blocks` finds them in the message's text."""

    def on_mount(self) -> None:
        self.number_blocks(self.query_ancestor(Markdown))

    @staticmethod
    def number_blocks(markdown: Markdown) -> None:
        for number, fence in enumerate(markdown.query(NumberedFence), start=1):
            fence.border_title = f"code {number}" + (f" · {fence.lexer}" if fence.lexer else "")


class ReplyMarkdown(Markdown):
    BLOCKS = {**Markdown.BLOCKS, "fence": NumberedFence, "code_block": NumberedFence}
