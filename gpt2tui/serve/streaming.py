"""Server-Sent Events for the streaming routes, at a small cost per token.

A stream is `data: {chunk}\\n\\n` events ending with `data: [DONE]\\n\\n`. Each chunk is a response model of `schemas.py`,
dumped and written as `json.dumps(chunk, ensure_ascii=False)` writes it: with ", " and ": " between items, the bytes
this server has always sent (pydantic's own `model_dump_json` is compact, so it would change them).

With many clients the event loop's time per token bounds the whole server, and most events of a stream are one token's
text and nothing else. Building, validating and dumping a model for each took more of that time than the rest of the
token's path together, so a `TextFrame` serialises a request's per-token chunk once, with a marker where the text goes,
and keeps the bytes either side: a token's event is then the JSON string of its text between them, byte for byte what
serialising the model would give (tests/serve/test_streaming.py holds the two equal). Chunks that carry anything else
(a finish reason, log-probabilities, usage) are serialised from their model as they come.

Events leave here as bytes, so StreamingResponse sends them without encoding them again, and one async generator
stands between the ticket and the response: each layer would cost the loop one more resumption per event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from fastapi.responses import StreamingResponse

from .choices import Choice
from .engine import Engine
from .errors import APIError, error_body
from .scheduler import DoneEvent, Ticket, TokenEvent
from .schemas import ChoiceLogprobs, ChunkChoice, CompletionChoice

DONE = b"data: [DONE]\n\n"

# json.dumps builds a new encoder on every call that sets an option; this one is built once.
_JSON = json.JSONEncoder(ensure_ascii=False)

# JSON writes it as "\u0000": no other value of a chunk (ids, numbers, a model's folder name) holds a NUL.
_MARK = "\x00"


def sse(chunk: dict) -> bytes:
    """One event: a dumped model."""
    return b"data: " + _JSON.encode(chunk).encode() + b"\n\n"


def sse_error(e: APIError) -> bytes:
    # ASCII-escaped, unlike the chunks: the error event has always been written so.
    return f"data: {json.dumps(error_body(e.message, e.type, e.param, e.code))}\n\n".encode()


class TextFrame:
    """`frame(text) == sse(chunk(text))`, where `chunk(text)` builds a model (validated) with `text` in one string
    field and dumps it; `chunk` runs once, here, and each call joins the bytes either side of the text."""

    def __init__(self, chunk: Callable[[str], dict]):
        self.chunk = chunk
        parts = sse(chunk(_MARK)).split(_JSON.encode(_MARK).encode())
        # Only a model id with a NUL in it could hold the marker too: such a request pays for a model per token.
        self.head, self.tail = parts if len(parts) == 2 else (None, None)

    def __call__(self, text: str) -> bytes:
        if self.head is None:
            return sse(self.chunk(text))
        return b"".join((self.head, _JSON.encode(text).encode(), self.tail))


def sse_response(
    ticket: Ticket,
    on_event: Callable[[TokenEvent | DoneEvent], Iterable[bytes]],
    opening: Iterable[bytes] = (),
    closing: Callable[[], Iterable[bytes]] = tuple,
) -> StreamingResponse:
    """The stream of one request: `opening`, the events `on_event` makes of each of the ticket's events, `closing()`
    once every row is done, then `[DONE]`. An `APIError` from `on_event` (a row that failed) ends the stream with an
    error event in OpenAI's shape, since the headers are gone already."""

    async def body():
        try:
            for data in opening:
                yield data
            async for event in ticket.events():
                for data in on_event(event):
                    yield data
            for data in closing():
                yield data
        except APIError as e:
            yield sse_error(e)
        finally:
            ticket.cancel()  # the client left (Starlette closes this generator), or all rows are done: a no-op
        yield DONE

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def completion_stream(
    ticket: Ticket,
    engine: Engine,
    choices: list[Choice],
    echoes: list[str],
    response: Callable[..., dict],
    logprobs: bool,
    include_usage: bool,
) -> StreamingResponse:
    """`/v1/completions`' stream: `response(choices, with_usage=False)` dumps a `Completion` chunk."""
    frames = [
        TextFrame(lambda text, i=c.index: response([CompletionChoice(text=text, index=i)])) for c in choices
    ]

    def on_event(event: TokenEvent | DoneEvent) -> tuple[bytes, ...]:
        c = choices[event.index]
        seen = len(c.tokens)
        text = c.push(event)
        if not logprobs and c.finish_reason is None:
            return (frames[c.index](text),) if text else ()
        lp = c.completion_logprobs(engine, seen) if logprobs else None
        if not (text or c.finish_reason or (lp and lp.tokens)):
            return ()
        choice = CompletionChoice(text=text, index=c.index, logprobs=lp, finish_reason=c.finish_reason)
        return (sse(response([choice])),)

    echoed = [
        response([CompletionChoice(text=e, index=c.index)]) for c, e in zip(choices, echoes, strict=True) if e
    ]
    return sse_response(
        ticket,
        on_event,
        opening=map(sse, echoed),
        closing=lambda: [sse(response([], with_usage=True))] if include_usage else [],
    )


def chat_stream(
    ticket: Ticket,
    engine: Engine,
    choices: list[Choice],
    chunk: Callable[..., dict],
    logprobs: bool,
    include_usage: bool,
) -> StreamingResponse:
    """`/v1/chat/completions`' stream: `chunk(choices, with_usage=False)` dumps a `ChatCompletionChunk`."""
    frames = [
        TextFrame(lambda text, i=c.index: chunk([ChunkChoice(index=i, delta={"content": text})]))
        for c in choices
    ]

    def on_event(event: TokenEvent | DoneEvent) -> list[bytes]:
        c = choices[event.index]
        seen = len(c.tokens)
        text = c.push(event)
        out = []
        if logprobs:
            lp = ChoiceLogprobs(content=c.chat_logprobs(engine, seen))
            if text or lp.content:
                out.append(sse(chunk([ChunkChoice(index=c.index, delta={"content": text}, logprobs=lp)])))
        elif text:
            out.append(frames[c.index](text))
        if c.finish_reason:
            out.append(sse(chunk([ChunkChoice(index=c.index, delta={}, finish_reason=c.finish_reason)])))
        return out

    role = chunk([ChunkChoice(index=c.index, delta={"role": "assistant", "content": ""}) for c in choices])
    return sse_response(
        ticket,
        on_event,
        opening=[sse(role)],
        closing=lambda: [sse(chunk([], with_usage=True))] if include_usage else [],
    )
