"""The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`.

A request becomes one scheduler row per choice (`n`, times each prompt of a completions list). Streaming answers with
Server-Sent Events, `data: {chunk}` lines ending with `data: [DONE]`; `stream_options.include_usage` adds a last
chunk with the usage and no choices. A client that disconnects cancels its rows before their next forward pass: a
streaming response's generator is closed by Starlette, a plain one is watched for the disconnect message.

Limits that answer 400 rather than cut anything: a prompt plus `max_tokens` longer than the model's window, more
rows than one batch holds (`n` times the prompts > `--max-batch`), more than four stop sequences.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request

from ..chat import AUTO_REPLY_CAP, ChatError
from .choices import Choice, usage
from .engine import Engine
from .errors import APIError
from .sampler import RowParams
from .scheduler import QueueFull, SchedulerClosed, Ticket
from .schemas import (
    MAX_STOP,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    _Sampling,
)
from .streaming import chat_stream, completion_stream

router = APIRouter()

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def _engine(request: Request) -> Engine:
    return request.app.state.engine


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    engine = _engine(request)
    return ModelList(data=[ModelCard(id=engine.model_id, created=engine.created)])


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    engine = _engine(request)
    if model_id != engine.model_id:
        raise APIError(
            404,
            f"the model {model_id!r} is not served here; this server serves {engine.model_id!r}",
            param="model",
            code="model_not_found",
        )
    return ModelCard(id=engine.model_id, created=engine.created)


# -- request checks ------------------------------------------------------------------------------------------------


def _stops(body: _Sampling) -> tuple[str, ...]:
    stop = body.stop
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP:
        raise APIError(400, f"stop: at most {MAX_STOP} stop sequences; got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "stop: stop sequences must be non-empty strings", param="stop")
    return tuple(stops)


def _refuse_unsupported(body: _Sampling) -> None:
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server; leave it out", param="logit_bias")


def _row_params(
    body: _Sampling, max_tokens: int, stop: tuple[str, ...], logprobs: int | None, choice: int
) -> RowParams:
    # Each choice of a seeded request gets its own seed, so n choices differ and each repeats.
    seed = None if body.seed is None else body.seed + choice
    return RowParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=seed,
        stop=stop,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logprobs=logprobs,
    )


def _check_fits(engine: Engine, prompt: list[int], max_tokens: int, what: str) -> None:
    ctx = engine.context_length
    if len(prompt) >= ctx or len(prompt) + max_tokens > ctx:
        raise APIError(
            400,
            f"this model's context window is {ctx} tokens; the request needs {len(prompt) + max_tokens} "
            f"({len(prompt)} in the {what}, {max_tokens} for the completion); shorten the {what} or lower max_tokens",
            param="max_tokens" if len(prompt) < ctx else ("messages" if what == "messages" else "prompt"),
            code="context_length_exceeded",
        )


def _check_rows(engine: Engine, rows: int) -> None:
    if rows > engine.max_batch:
        raise APIError(
            400,
            f"n: the request asks for {rows} completions; this server generates at most "
            f"{engine.max_batch} per request (--max-batch)",
            param="n",
        )


def _submit(engine: Engine, prompts: list[list[int]], params: list[RowParams]) -> Ticket:
    try:
        return engine.submit(prompts, params)
    except QueueFull as e:
        raise APIError(
            429,
            f"the server is busy: {e.waiting} requests are waiting and the queue holds "
            f"{e.capacity}; retry shortly",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    except SchedulerClosed:
        raise APIError(
            503, "the server is shutting down", type="server_error", code="shutting_down"
        ) from None


async def _watch_disconnect(request: Request, ticket: Ticket) -> None:
    """Cancel the ticket when the client goes away (the body has been read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            ticket.cancel()
            return


async def _collect(request: Request, ticket: Ticket, choices: list[Choice]) -> None:
    watcher = asyncio.create_task(_watch_disconnect(request, ticket))
    try:
        async for event in ticket.events():
            choices[event.index].push(event)
    finally:
        watcher.cancel()
        ticket.cancel()  # an error above leaves no row running for nobody


# -- completions ---------------------------------------------------------------------------------------------------


def _completion_prompts(engine: Engine, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        return [engine.encode(prompt)]
    if not prompt:
        raise APIError(400, "prompt: an empty list has nothing to complete", param="prompt")
    if isinstance(prompt[0], str):
        return [engine.encode(p) for p in prompt]
    if isinstance(prompt[0], int):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) or [engine.tokenizer.eot_token] for p in prompt]
    vocab = engine.tokenizer.n_vocab
    for ids in prompts:
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(
                400, f"prompt: token id {bad} is not in the vocabulary (0 to {vocab - 1})", param="prompt"
            )
    return prompts


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request):
    engine = _engine(request)
    _refuse_unsupported(body)
    if body.suffix:
        raise APIError(
            400, "suffix is not supported: GPT-2 only continues text; leave it out", param="suffix"
        )
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise APIError(
            400, "best_of is not supported (only best_of equal to n); leave it out", param="best_of"
        )
    if body.echo and body.logprobs is not None:
        raise APIError(
            400,
            "echo with logprobs would need the prompt's log-probabilities, which this server does "
            "not compute; drop one of them",
            param="echo",
        )
    stop = _stops(body)
    max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    prompts = _completion_prompts(engine, body.prompt)
    _check_rows(engine, len(prompts) * n)
    for ids in prompts:
        _check_fits(engine, ids, max_tokens, "prompt")
    rows = [p for p in prompts for _ in range(n)]
    params = [_row_params(body, max_tokens, stop, body.logprobs, i % n) for i in range(len(rows))]
    echoes = [engine.decode(p) if body.echo else "" for p in rows]
    ticket = _submit(engine, rows, params)
    prompt_tokens = sum(map(len, prompts))
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    choices = [Choice(i, chat=False) for i in range(len(rows))]

    def response(cs: list[CompletionChoice], with_usage: bool = False) -> dict:
        return Completion(
            id=rid,
            created=created,
            model=engine.model_id,
            choices=cs,
            usage=usage(choices, prompt_tokens) if with_usage else None,
        ).model_dump()

    if not body.stream:
        for c, echo in zip(choices, echoes, strict=True):
            c.text = echo
        await _collect(request, ticket, choices)
        return response(
            [
                CompletionChoice(
                    text=c.text,
                    index=c.index,
                    finish_reason=c.finish_reason,
                    logprobs=c.completion_logprobs(engine) if body.logprobs is not None else None,
                )
                for c in choices
            ],
            with_usage=True,
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return completion_stream(
        ticket, engine, choices, echoes, response, body.logprobs is not None, include_usage
    )


# -- chat ----------------------------------------------------------------------------------------------------------


def _messages(body: ChatCompletionRequest) -> list[dict]:
    out = []
    for i, m in enumerate(body.messages):
        role = "system" if m.role == "developer" else m.role  # OpenAI's newer name for the system role
        if role not in ("system", "user", "assistant"):
            raise APIError(
                400,
                f"messages.{i}.role: {m.role!r} is not supported; use system, user or assistant",
                param=f"messages.{i}.role",
            )
        content = m.content
        if isinstance(content, list):
            if any(part.type != "text" or part.text is None for part in content):
                raise APIError(
                    400, f"messages.{i}.content: only text parts are supported", param=f"messages.{i}.content"
                )
            content = "".join(part.text for part in content)
        out.append({"role": role, "content": content or ""})
    return out


def _refuse_chat_unsupported(body: ChatCompletionRequest) -> None:
    _refuse_unsupported(body)
    for name in ("tools", "functions"):
        if getattr(body, name):
            raise APIError(400, f"{name} are not supported by this model; leave them out", param=name)
    if body.tool_choice not in (None, "none"):
        raise APIError(400, "tool_choice is not supported by this model; leave it out", param="tool_choice")
    if body.response_format is not None and body.response_format.type != "text":
        raise APIError(
            400,
            f"response_format {body.response_format.type!r} is not supported; only text",
            param="response_format",
        )


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    engine = _engine(request)
    _refuse_chat_unsupported(body)
    n = body.n or 1
    _check_rows(engine, n)
    stop = tuple(dict.fromkeys(engine.chat_stop + _stops(body)))
    try:
        prompt = engine.chat_prompt(_messages(body))
    except ChatError as e:
        raise APIError(400, f"messages: {e}", param="messages") from None
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    # Unset: the room the prompt leaves, at most the chat app's cap (chat.reply_length).
    max_tokens = (
        asked if asked is not None else max(1, min(AUTO_REPLY_CAP, engine.context_length - len(prompt)))
    )
    _check_fits(engine, prompt, max_tokens, "messages")
    top = (body.top_logprobs or 0) if body.logprobs else None
    ticket = _submit(engine, [prompt] * n, [_row_params(body, max_tokens, stop, top, i) for i in range(n)])
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    choices = [Choice(i, chat=True) for i in range(n)]

    if not body.stream:
        await _collect(request, ticket, choices)
        return ChatCompletion(
            id=rid,
            created=created,
            model=engine.model_id,
            usage=usage(choices, len(prompt)),
            choices=[
                ChatChoice(
                    index=c.index,
                    message=AssistantMessage(content=c.text),
                    finish_reason=c.finish_reason,
                    logprobs=ChoiceLogprobs(content=c.chat_logprobs(engine)) if body.logprobs else None,
                )
                for c in choices
            ],
        ).model_dump()

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(cs: list[ChunkChoice], with_usage: bool = False) -> dict:
        data = ChatCompletionChunk(
            id=rid,
            created=created,
            model=engine.model_id,
            choices=cs,
            usage=usage(choices, len(prompt)) if with_usage else None,
        ).model_dump()
        if not include_usage:
            del data["usage"]  # OpenAI sends the field only when usage was asked for
        return data

    return chat_stream(ticket, engine, choices, chunk, bool(body.logprobs), include_usage)
