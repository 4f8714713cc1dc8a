"""From the scheduler's events to OpenAI's choices: text, finish reasons, log-probabilities and usage.

A chat reply is trimmed as the chat app trims it (`session.ReplyStream`): no leading whitespace, and trailing
whitespace held back until more text follows, so a streamed reply joins to exactly the non-streamed one.
"""

from __future__ import annotations

from .engine import Engine
from .errors import APIError
from .scheduler import DoneEvent, TokenEvent
from .schemas import CompletionLogprobs, TokenLogprob, TopLogprob, Usage

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def token_text(engine: Engine, token: int) -> str:
    """A token as the legacy completions API names it: its text, or `bytes:\\xNN...` when it is part of a
    character."""
    raw = engine.token_bytes(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class _Trim:
    def __init__(self):
        self.started = False
        self.pending = ""

    def push(self, delta: str) -> str:
        text = self.pending + delta
        if not self.started:
            text = text.lstrip()
        body = text.rstrip()
        self.pending = text[len(body) :]
        if body:
            self.started = True
        return body


class Choice:
    """One row's reply as it arrives."""

    def __init__(self, index: int, chat: bool, prefix: str = ""):
        self.index = index
        self.text = prefix  # `echo` puts the prompt first
        self.trim = _Trim() if chat else None
        self.tokens: list[TokenEvent] = []
        self.offsets: list[int] = []
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.prompt_tokens = 0

    def push(self, event: TokenEvent | DoneEvent) -> str:
        """The text this event adds to the reply."""
        if isinstance(event, TokenEvent):
            self.tokens.append(event)
            self.offsets.append(len(self.text))
            delta = event.text
        else:
            self.completion_tokens = event.completion_tokens
            self.prompt_tokens = event.prompt_tokens
            if event.finish_reason == "error":
                raise APIError(500, f"generation failed: {event.error}", type="server_error")
            if event.finish_reason == "cancelled":
                raise APIError(
                    503,
                    "the server is shutting down; send the request again later",
                    type="server_error",
                    code="shutting_down",
                )
            self.finish_reason = FINISH[event.finish_reason]
            delta = event.text
        if self.trim is not None:
            delta = self.trim.push(delta)
        self.text += delta
        return delta

    def completion_logprobs(self, engine: Engine, start: int = 0) -> CompletionLogprobs:
        events = self.tokens[start:]
        return CompletionLogprobs(
            tokens=[token_text(engine, e.token) for e in events],
            token_logprobs=[e.sampled.logprob for e in events],
            top_logprobs=[{token_text(engine, t): lp for t, lp in e.sampled.top or []} for e in events],
            text_offset=self.offsets[start:],
        )

    def chat_logprobs(self, engine: Engine, start: int = 0) -> list[TokenLogprob]:
        def entry(token: int, logprob: float) -> TopLogprob:
            raw = engine.token_bytes(token)
            return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(raw))

        out = []
        for e in self.tokens[start:]:
            first = entry(e.token, e.sampled.logprob)
            top = [entry(t, lp) for t, lp in e.sampled.top or []]
            out.append(TokenLogprob(**first.model_dump(), top_logprobs=top))
        return out


def usage(choices: list[Choice], prompt_tokens: int) -> Usage:
    completion = sum(c.completion_tokens for c in choices)
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
    )
