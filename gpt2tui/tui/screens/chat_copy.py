"""Copying from the chat screen: the last reply (Ctrl+L), or a message or one of a reply's code blocks (Ctrl+T, the
copy screen). Text goes to the terminal's clipboard (OSC 52) at once and to the system's, where one is reachable, from a thread."""

from __future__ import annotations

from ..clipboard import copy_to_system
from ..widgets import MessageList
from .copy import Copied, CopyScreen


class CopyActions:
    """Mixed into `ChatScreen`, whose messages and streaming reply these use."""

    def action_copy_reply(self) -> None:
        replies = [
            v for v in self.query_one(MessageList).views if v.role == "assistant" and v is not self.reply_view
        ]
        text = replies[-1].content if replies else ""
        if not text:
            self.notify("There is no reply to copy yet.")
            return
        self.copy_text(Copied(text, "the last reply"))

    def action_copy(self) -> None:
        views = [v for v in self.query_one(MessageList).views if v is not self.reply_view]
        if not views:
            self.notify("There is nothing to copy yet.")
            return
        # The message the user is on (selected or focused inside), else the last reply.
        focused = self.focused
        chosen = next(
            (
                i
                for i, v in enumerate(views)
                if focused is not None and (focused is v or v in focused.ancestors)
            ),
            None,
        )
        if chosen is None:
            chosen = max((i for i, v in enumerate(views) if v.role == "assistant"), default=len(views) - 1)

        def picked(copied: Copied | None) -> None:
            if copied is not None:
                self.copy_text(copied)

        self.app.push_screen(CopyScreen([(v.role, v.author, v.content) for v in views], chosen), picked)

    def copy_text(self, copied: Copied) -> None:
        """Copy through the terminal (OSC 52) at once, then to the system clipboard where one is reachable, in a
        thread: a clipboard program may take a moment, or hang without a display."""
        if not copied.text:
            self.notify(f"Not copied: {copied.what} is empty.", severity="warning")
            return
        self.app.copy_to_clipboard(copied.text)
        self.run_worker(
            lambda: self._copy_to_system(copied), name="copy", group="copy", thread=True, exit_on_error=False
        )

    def _copy_to_system(self, copied: Copied) -> None:
        tool = copy_to_system(copied.text)
        lines = copied.text.count("\n") + 1
        size = f"{len(copied.text):,} characters" + (f", {lines} lines" if lines > 1 else "")
        how = f"the terminal (OSC 52) and {tool}" if tool else "the terminal's clipboard (OSC 52)"
        self.app.call_from_thread(
            self.notify, f"Copied {copied.what} ({size}) through {how}.", title="Copied"
        )
