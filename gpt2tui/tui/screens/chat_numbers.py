"""The chat screen's numbers between replies: the context the conversation fills, the token counts under each
message, and the warning before the oldest turns drop out of the prompt. A streaming reply's own numbers come with
its deltas (`ChatScreen._delta`)."""

from __future__ import annotations

from ...chat import ChatError, build_prompt
from ..numbers import budget_for, message_numbers, near_full_warning
from ..widgets import MessageList, StatusBar


class LiveNumbers:
    """Mixed into `ChatScreen`, whose session, messages and status line these use."""

    def _show_context_estimate(self) -> None:
        session = self.session
        if session is None:
            return
        text = session.template.render(session.conversation())
        used = len(session.tokenizer.encode_ordinary(text))
        self.query_one(StatusBar).context_used = used
        self._show_counts()
        self._warn_if_near_full(used)

    def _prompt_tokens(self, messages: list[dict]) -> int | None:
        """The prompt a reply to `messages` (ending with a user message) is given under today's settings."""
        session = self.session
        try:
            return len(
                build_prompt(
                    session.tokenizer,
                    session.template,
                    session.conversation(messages),
                    session.context_length,
                    self._reply_room(),
                ).ids
            )
        except (ChatError, TypeError, ValueError):
            return None

    def _reply_room(self) -> int:
        window = self.session.context_length
        return window - budget_for(window, getattr(self.session.settings, "max_new_tokens", None))

    def _show_counts(self) -> None:
        """Token counts under every message but the one streaming (which shows its own, live)."""
        encode = self.session.tokenizer.encode_ordinary
        messages: list[dict] = []
        for view in self.query_one(MessageList).views:
            messages.append({"role": view.role, "content": view.content})
            if view is self.reply_view:
                continue
            if view.generated is not None:
                prompt, count = view.generated
            else:
                prompt = self._prompt_tokens(messages[:-1]) if view.role == "assistant" else None
                count = len(encode(view.content))
            view.set_numbers(message_numbers(view.role, count, prompt, view.tokens_per_s))

    def _warn_if_near_full(self, used: int) -> None:
        """Say so once per conversation before the oldest turns start to drop out of the prompt."""
        window = self.session.context_length
        warning = near_full_warning(
            used, budget_for(window, getattr(self.session.settings, "max_new_tokens", None))
        )
        if not warning or self.warned_near_full == (self.conversation_id or 0):
            return
        self.warned_near_full = self.conversation_id or 0
        self.notify(warning + ".", title="Context window", severity="warning", timeout=10)
