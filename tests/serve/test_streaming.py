"""The streamed bytes are the schemas' models written as `json.dumps(dump, ensure_ascii=False)`, whichever way the
server builds them (`streaming.TextFrame`'s precomputed halves or a model per chunk), and a stream ends as it should."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt2tui.serve.errors import APIError
from gpt2tui.serve.schemas import ChatCompletionChunk, ChunkChoice, Completion, CompletionChoice
from gpt2tui.serve.streaming import DONE, TextFrame, sse_response

HELLO = [{"role": "user", "content": "Say hello to the harbour."}]


def written(dump: dict) -> bytes:
    """An event as the server has always written one."""
    return f"data: {json.dumps(dump, ensure_ascii=False)}\n\n".encode()


def completion_chunk(model: str, index: int):
    def dump(text: str) -> dict:
        return Completion(
            id="cmpl-1", created=1, model=model, choices=[CompletionChoice(text=text, index=index)]
        ).model_dump()

    return dump


def chat_chunk(model: str, index: int):
    def dump(text: str) -> dict:
        data = ChatCompletionChunk(
            id="chatcmpl-1",
            created=1,
            model=model,
            choices=[ChunkChoice(index=index, delta={"content": text})],
        ).model_dump()
        del data["usage"]
        return data

    return dump


# Escapes, the marker TextFrame writes in its template, and characters JSON leaves raw (ensure_ascii=False).
AWKWARD = [
    "",
    " the",
    '"',
    "\\",
    "\n\t\r",
    "\x00",
    "\x00\x00",
    "\x1f\x7f",
    "é ünï",
    "\u2028",
    "🦀",
    '"\\u0000"',
]


@pytest.mark.parametrize("chunk", [completion_chunk, chat_chunk])
@pytest.mark.parametrize("text", AWKWARD)
def test_a_text_frame_writes_the_models_bytes(chunk, text):
    dump = chunk("tiny-gpt2", 3)
    assert TextFrame(dump)(text) == written(dump(text))


@pytest.mark.parametrize("chunk", [completion_chunk, chat_chunk])
def test_a_text_frame_is_right_when_the_model_id_holds_its_marker(chunk):
    dump = chunk("odd\x00model", 0)
    assert TextFrame(dump)("\x00 é") == written(dump("\x00 é"))


@given(text=st.text(), index=st.integers(0, 64), model=st.text(min_size=1))
def test_a_text_frame_writes_the_models_bytes_for_any_text_and_model(text, index, model):
    # A model id holding the marker itself (a NUL) too: the frame then serialises each chunk from its model.
    for chunk in (completion_chunk, chat_chunk):
        dump = chunk(model, index)
        assert TextFrame(dump)(text) == written(dump(text))


def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    return [e + b"\n\n" for e in raw[:-2].split(b"\n\n")]


def _stream(server, path: str, body: dict) -> list[bytes]:
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200
        return _events(b"".join(r.iter_raw()))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"n": 2, "echo": True, "stream_options": {"include_usage": True}},
        {"logprobs": 2, "stop": ["e"]},
    ],
)
def test_every_streamed_completion_chunk_is_the_models_serialisation(server, extra):
    events = _stream(
        server,
        "/v1/completions",
        {"prompt": "Fog é", "max_tokens": 12, "temperature": 0, "stream": True, **extra},
    )
    assert events[-1] == DONE
    texts = []
    for event in events[:-1]:
        assert event.startswith(b"data: ")
        chunk = Completion.model_validate_json(event[6:])
        assert event == written(chunk.model_dump())
        texts += [c.text for c in chunk.choices]
    assert "".join(texts)


@pytest.mark.parametrize(
    "extra",
    [{}, {"n": 2, "stream_options": {"include_usage": True}}, {"logprobs": True, "top_logprobs": 2}],
)
def test_every_streamed_chat_chunk_is_the_models_serialisation(server, extra):
    events = _stream(
        server,
        "/v1/chat/completions",
        {"messages": HELLO, "max_tokens": 12, "temperature": 0, "stream": True, **extra},
    )
    assert events[-1] == DONE
    with_usage = "stream_options" in extra
    contents = []
    for event in events[:-1]:
        assert event.startswith(b"data: ")
        chunk = ChatCompletionChunk.model_validate_json(event[6:])
        dump = chunk.model_dump()
        if not with_usage:
            del dump["usage"]  # sent only when asked for
        assert event == written(dump)
        contents += [c.delta.get("content", "") for c in chunk.choices]
    assert "".join(contents)


class _Ticket:
    """What `sse_response` reads of a scheduler ticket: its events, and `cancel()`."""

    def __init__(self, events):
        self._events = events
        self.cancelled = False

    async def events(self):
        for e in self._events:
            yield e

    def cancel(self):
        self.cancelled = True


def _body(response) -> list[bytes]:
    async def read():
        return [chunk async for chunk in response.body_iterator]

    return asyncio.run(read())


def test_a_failed_row_ends_the_stream_with_an_error_event_then_done():
    def on_event(event):
        if event == "boom":
            raise APIError(500, "generation failed: RuntimeError: é", type="server_error")
        return [f"data: {event}\n\n".encode()]

    ticket = _Ticket(["a", "boom", "never"])
    response = sse_response(
        ticket, on_event, opening=[b"data: open\n\n"], closing=lambda: [b"data: usage\n\n"]
    )
    error = {
        "error": {
            "message": "generation failed: RuntimeError: é",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert _body(response) == [
        b"data: open\n\n",
        b"data: a\n\n",
        f"data: {json.dumps(error)}\n\n".encode(),  # ASCII-escaped, as error events have always been
        DONE,
    ]
    assert ticket.cancelled
    assert response.media_type == "text/event-stream"


def test_a_finished_stream_sends_its_closing_events_then_done():
    ticket = _Ticket(["a", "b"])
    response = sse_response(ticket, lambda e: [e.encode()] if e == "b" else [], closing=lambda: [b"usage"])
    assert _body(response) == [b"b", b"usage", DONE]
    assert ticket.cancelled  # a no-op once every row is done, but no row is left running for nobody
