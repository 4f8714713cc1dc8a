"""ChatSession: the object the chat app talks to. It holds the model, the conversation and its settings; the app
sees only text, stats and errors, never tensors.

    session = ChatSession.load("my-chatbot")
    for delta in session.reply("What is a transformer?"):
        print(delta, end="", flush=True)
    print(session.last_stats)

A reply is a `ReplyStream`: iterate it (in a worker thread) for text deltas. `session.cancel()`, from any thread,
stops it before the next token is computed (`generate.Stream` checks the event after every sampled token); the
partial reply is kept, marked `cancelled`. Whenever a reply ends (end of text, a stop string, max_new_tokens, a full window, cancelled, or an error) it is appended to the
conversation with its finish reason. A reply is stripped of surrounding whitespace; its deltas join to exactly the
stored text.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .chat import ChatError, ChatTemplate, EmptyMessageError, Prompt, build_prompt, reply_length, template_for
from .generate import SamplingParams, Stream
from .model import GPT2
from .quant import quantization_of
from .setting_fields import FIELDS, check_system_prompt
from .tokenizer import Tokenizer
from .weights import load_model

FINISH_REASONS = ("eos", "stop", "max_tokens", "context_full", "cancelled", "error")


@dataclass(frozen=True)
class ChatSettings:
    """Per-conversation generation settings. The defaults suit a small GPT-2 chatbot: a little below temperature 1
    with top-k and top-p to keep it on topic, and a mild repetition penalty, as small models loop easily."""

    system_prompt: str = ""  # replaces the template's preamble; "" keeps it
    temperature: float = 0.7  # 0: greedy
    top_k: int | None = 50  # None or 0: off
    top_p: float | None = 0.95  # None or 1.0: off
    repetition_penalty: float = 1.1  # 1.0: off
    max_new_tokens: int | None = None  # None: the room the prompt leaves in the window, at most AUTO_REPLY_CAP
    seed: int | None = None  # a fixed seed makes each reply to the same conversation repeat

    def __post_init__(self) -> None:
        # The bounds and their wording live in setting_fields, shared with the dialog, /set, flags and config.toml.
        check_system_prompt(self.system_prompt)
        for name, field in FIELDS.items():
            field.check(getattr(self, name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatSettings:
        """Settings from stored JSON. Unknown keys (from another version) are ignored; bad values raise `ChatError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> ChatSettings:
        return dataclasses.replace(self, **changes)

    def sampling(self, stop: Sequence[str] = (), context_length: int | None = None,
                 prompt_tokens: int = 0) -> SamplingParams:
        """The sampling parameters of a reply to a prompt of `prompt_tokens` in a window of `context_length`: with no
        max_new_tokens set, the reply may take the room left, at most AUTO_REPLY_CAP (`chat.reply_length`)."""
        if self.max_new_tokens is None and context_length is None:
            raise ValueError("the reply's length follows the room left in the window: pass context_length")
        max_new = reply_length(context_length or 0, prompt_tokens, self.max_new_tokens)
        return SamplingParams(
            max_new_tokens=max_new, temperature=float(self.temperature), top_k=self.top_k,
            top_p=self.top_p, repetition_penalty=float(self.repetition_penalty), seed=self.seed, stop=tuple(stop),
        )


@dataclass(frozen=True)
class ReplyStats:
    """What the footer shows about the last reply."""

    finish_reason: str
    new_tokens: int  # tokens the model generated (stop-string tokens included)
    prompt_tokens: int  # the conversation as fed to the model
    context_length: int
    turns_dropped: int  # oldest turns left out to fit the window
    cut_tokens: int  # tokens cut from the start of the last message
    seconds: float  # from the request to the end
    time_to_first_token: float | None  # to the first text, prefill included; None if none came
    tokens_per_s: float | None  # decoding speed after the first text; None when too few tokens to tell

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.new_tokens


class ReplyStream:
    """The text deltas of one reply. Iterate it in one thread; `cancel()` may come from any thread. Afterwards
    `text`, `finish_reason`, `stats` and `message` (the assistant message appended to the conversation) are set."""

    def __init__(self, session: ChatSession, prompt: Prompt):
        self.session = session
        self.prompt = prompt
        self.text = ""
        self.finish_reason: str | None = None
        self.stats: ReplyStats | None = None
        self.message: dict | None = None
        self._cancel = threading.Event()
        self._started = False
        self._stream: Stream | None = None
        self._gen = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        self._started = True
        return next(self._gen)

    @property
    def new_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self._stream.token_ids) if self._stream is not None else 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop before the next token; safe from any thread. The consumer's loop then ends."""
        self._cancel.set()

    def close(self) -> None:
        """End the reply now, from the consuming thread (or when it was never iterated)."""
        if self.done:
            return
        if self._started:
            self._gen.close()  # runs _run's cleanup, which records the reply
        else:
            self._gen = iter(())
            self._finish("cancelled", None, time.perf_counter(), None, 0)

    def _run(self) -> Iterator[str]:
        session = self.session
        t0 = time.perf_counter()
        first: float | None = None
        first_tokens = 0
        stream: Stream | None = None
        deltas: Generator[str, None, None] | None = None
        pending = ""  # trailing whitespace: emitted only once more text follows, so a reply never ends in it
        reason = None
        try:
            params = session.settings.sampling(session.template.stop, session.context_length, len(self.prompt.ids))
            stream = self._stream = Stream(session.model, session.tokenizer, self.prompt.ids, params, cancel=self._cancel)
            deltas = iter(stream)  # Stream.__iter__ is a generator: closing it stops the decoder
            # Checked before every token: once set, no further token is computed.
            while not self._cancel.is_set():
                try:
                    delta = next(deltas)
                except StopIteration:
                    break
                text = pending + delta
                if not self.text:
                    text = text.lstrip()
                body = text.rstrip()
                pending = text[len(body) :]
                if body:
                    if first is None:
                        first, first_tokens = time.perf_counter(), len(stream.token_ids)
                    self.text += body
                    yield body
        except (GeneratorExit, KeyboardInterrupt):  # the consumer left, or Ctrl+C in a line-by-line chat
            reason = "cancelled"
            raise
        except BaseException:
            reason = "error"
            raise
        finally:
            if deltas is not None:
                deltas.close()  # a no-op when it ran out; cut short, it says "cancelled"
            if stream is not None:
                reason = reason or stream.finish_reason
            self._finish(reason or "cancelled", stream, t0, first, first_tokens)

    def _finish(self, reason: str, stream: Stream | None, t0: float, first: float | None, first_tokens: int) -> None:
        end = time.perf_counter()
        n = len(stream.token_ids) if stream is not None else 0
        rate = None
        if first is not None and n > first_tokens and end > first:
            rate = (n - first_tokens) / (end - first)
        session = self.session
        self.stats = ReplyStats(
            finish_reason=reason, new_tokens=n, prompt_tokens=len(self.prompt.ids),
            context_length=session.context_length, turns_dropped=self.prompt.turns_dropped,
            cut_tokens=self.prompt.cut_tokens, seconds=end - t0,
            time_to_first_token=None if first is None else first - t0, tokens_per_s=rate,
        )
        self.message = {"role": "assistant", "content": self.text, "finish_reason": reason}
        with session._lock:
            session._messages.append(dict(self.message))
            session.last_stats = self.stats
            if session._active is self:
                session._active = None
        self.finish_reason = reason  # last: `done` means the conversation already has the reply


class ChatSession:
    """A conversation with a model. `messages` holds the user and assistant messages; the system prompt lives in
    `settings`. Only one reply streams at a time."""

    def __init__(
        self,
        model: GPT2,
        tokenizer: Tokenizer,
        template: ChatTemplate | str | None = None,
        settings: ChatSettings | None = None,
        messages: Sequence[Mapping] = (),
        model_name: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template_for(model if template is None else template)
        self.settings = settings or ChatSettings()
        self.model_name = model_name or getattr(model, "name_or_path", None) or "gpt2"
        self.last_stats: ReplyStats | None = None
        self._lock = threading.RLock()
        self._active: ReplyStream | None = None
        self._messages: list[dict] = []
        self.set_messages(messages)

    @classmethod
    def load(
        cls,
        name_or_path: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        settings: ChatSettings | None = None,
        allow_download: bool = True,
        quantize: str | None = None,
    ) -> ChatSession:
        """Load a model by name, directory or checkpoint (see `weights.resolve`) with the template its config names;
        `quantize` packs its weights (`quant.py`); float32 weights on the CPU load packed without rounding, which
        decodes faster (`load_model(pack=True)`)."""
        model, tokenizer = load_model(name_or_path, device=device, dtype=dtype, allow_download=allow_download,
                                      quantize=quantize, pack=True)
        return cls(model, tokenizer, settings=settings, model_name=str(name_or_path))

    # -- the conversation ----------------------------------------------------------------------------------------

    @property
    def messages(self) -> list[dict]:
        """A copy of the conversation so far (without the system prompt)."""
        with self._lock:
            return [dict(m) for m in self._messages]

    def set_messages(self, messages: Sequence[Mapping]) -> None:
        """Replace the conversation (e.g. one restored from the store); it must not hold system messages."""
        messages = [dict(m) for m in messages]
        if any(m.get("role") == "system" for m in messages):
            raise ChatError("the system prompt belongs in settings.system_prompt, not among the messages")
        self.template.layout(messages)  # checks roles and their order
        with self._lock:
            self._check_idle()
            self._messages = messages

    def clear(self) -> None:
        self.set_messages([])

    def conversation(self, messages: Sequence[Mapping] | None = None) -> list[dict]:
        """What the template renders: the system prompt (if set), then the messages."""
        messages = self.messages if messages is None else list(messages)
        system = self.settings.system_prompt.strip()
        return ([{"role": "system", "content": system}] if system else []) + messages

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    @property
    def busy(self) -> bool:
        return self._active is not None

    def info(self) -> dict:
        """What the footer shows about the model."""
        return {
            "model": self.model_name,
            "device": str(self.model.device),
            # A packed model computes in float32; what the user chose, and what sets its speed, is its weights'.
            "dtype": quantization_of(self.model) or str(self.model.dtype).removeprefix("torch."),
            "parameters": self.model.num_params(),
            "context_length": self.context_length,
            "attention": self.model.attention_backend(),
            "template": self.template.name,
        }

    # -- replies -------------------------------------------------------------------------------------------------

    def reply(self, user_text: str) -> ReplyStream:
        """Add a user message and stream the reply. The text is stripped; an empty (whitespace-only) message raises
        `EmptyMessageError` and changes nothing. A message too long for the window is cut (see `ReplyStats`)."""
        text = user_text.strip()
        if not text:
            raise EmptyMessageError("the message is empty; type something to send")
        with self._lock:
            self._check_idle()
            messages = self.messages
            if messages and messages[-1]["role"] == "user":
                # A user message whose reply never ran (a crash between the two): record that, keep both.
                messages.append({"role": "assistant", "content": "", "finish_reason": "cancelled"})
            messages.append({"role": "user", "content": text})
            prompt = self._prompt(messages)  # before changing anything: a prompt that cannot be built changes nothing
            self._messages = messages
            return self._start(prompt)

    def regenerate(self) -> ReplyStream:
        """Drop the last reply (if the conversation ends with one) and stream a new reply to the last user message."""
        with self._lock:
            self._check_idle()
            messages = self.messages
            if messages and messages[-1]["role"] == "assistant":
                messages.pop()
            if not messages:
                raise ChatError("there is no message to reply to yet")
            prompt = self._prompt(messages)
            self._messages = messages
            return self._start(prompt)

    def cancel(self) -> None:
        """Stop the reply in flight, if any, before its next token; safe from any thread."""
        active = self._active
        if active is not None:
            active.cancel()

    def _prompt(self, messages: list[dict]) -> Prompt:
        max_new = self.settings.max_new_tokens
        return build_prompt(self.tokenizer, self.template, self.conversation(messages), self.context_length, max_new)

    def _start(self, prompt: Prompt) -> ReplyStream:
        self._active = ReplyStream(self, prompt)
        return self._active

    def _check_idle(self) -> None:
        active = self._active
        if active is None:
            return
        if not active._started:
            active.close()  # asked for and never read: it ends, empty and cancelled, so the turns still alternate
            return
        raise ChatError("a reply is still streaming; cancel it and let it end before sending another message")
