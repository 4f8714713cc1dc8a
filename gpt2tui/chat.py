"""Chat templates, rendering a conversation into tokens, and the context-window policy.

The chat app and `gpt2tui finetune` render conversations with the same code, so training and chatting agree token
for token: every piece of a conversation (template text, a message, a reply) is encoded on its own and the ids are
concatenated. A reply the model streams after a prompt is therefore, in training, preceded by exactly the ids it was
given at chat time, whatever text sits at the seams.

A conversation is a list of messages, `{"role": "system" | "user" | "assistant", "content": str}` (an assistant
message may also carry the `finish_reason` of its generation). A system message may only come first; after it, user
and assistant alternate, starting with a user. A conversation that ends with a user message renders with the
generation prompt (the template's opening of a reply) at the end.

The session object the chat app talks to, `ChatSession` with its `ChatSettings`, lives in `gpt2tui.session`, which
builds on this module (it needs torch; this module does not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, GPT2TUIError

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


class ChatError(GPT2TUIError, ValueError):
    """A conversation or chat setting that cannot be used as it is; the message says why."""


class EmptyMessageError(ChatError):
    """A user message that is empty or only whitespace: there is nothing to reply to."""


# -- templates -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes text. Each format holds `{content}` once; plain `str.replace` fills it, so braces in
    messages need no escaping."""

    name: str
    description: str
    default_system: str  # the header's content when the conversation has no system prompt ("" for no header)
    system: str  # the header: a system prompt replaces `default_system` in it
    user: str  # one user message
    input: str  # an instruction's optional input (Alpaca's "### Input:" section), appended to the user message
    assistant_prompt: str  # what opens a reply; the generation prompt ends with it
    assistant: str  # the reply itself
    assistant_end: str  # what closes a reply in the history
    stop: tuple[str, ...] = ()  # where the model starts inventing the next turn: the reply ends before them

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        for field in ("system", "user", "input", "assistant"):
            if getattr(self, field).count("{content}") != 1:
                raise ConfigError(f"chat template {self.name!r}: {field} must contain {{content}} exactly once")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"chat template {self.name!r}: stop strings must be non-empty strings")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatTemplate:
        """A custom template stored as a dict of these fields in a checkpoint's config."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"chat template has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        try:
            return cls(**{"description": "custom", **data})
        except TypeError as e:
            raise ConfigError(f"chat template is incomplete or invalid: {e}") from None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "stop": list(self.stop)}

    def user_content(self, instruction: str, input: str = "") -> str:
        """A user message from an instruction and its optional input, as the seed's records have them."""
        return instruction + (_fill(self.input, input) if input else "")

    def instruction_messages(self, instruction: str, input: str = "", output: str | None = None) -> list[dict]:
        """A seed record `{"instruction", "input", "output"}` as a conversation (without the reply when `output` is
        None)."""
        messages = [{"role": "user", "content": self.user_content(instruction, input)}]
        if output is not None:
            messages.append({"role": "assistant", "content": output})
        return messages

    def layout(self, messages: Sequence[Mapping]) -> tuple[str, list[Turn]]:
        """The header text and the turns of a conversation, checked for shape."""
        _check(messages)
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        header_content = system or self.default_system
        header = _fill(self.system, header_content) if header_content else ""
        body = [m for m in messages if m["role"] != "system"]
        turns = []
        for i in range(0, len(body), 2):
            before, after = self.user.split("{content}")
            reply = body[i + 1]["content"] if i + 1 < len(body) else None
            pieces = [] if reply is None else [_fill(self.assistant, reply), self.assistant_end]
            turns.append(Turn(before, body[i]["content"], after + self.assistant_prompt, [p for p in pieces if p]))
        return header, turns

    def render(self, messages: Sequence[Mapping]) -> str:
        """The conversation as text; ending with a user message, it ends with the generation prompt."""
        header, turns = self.layout(messages)
        return header + "".join(t.before + t.content + t.after + "".join(t.reply) for t in turns)


@dataclass
class Turn:
    """One user message and its reply, as the pieces that are encoded one by one."""

    before: str  # template text before the user's message
    content: str  # the user's message: the only piece the context policy may cut
    after: str  # template text after it, through the opening of the reply
    reply: list[str]  # the reply and the text closing it; empty when the turn awaits its reply

    def encode(self, encode: Callable[[str], list[int]]) -> list[int]:
        return [i for piece in (self.before, self.content, self.after, *self.reply) for i in encode(piece)]


def _fill(fmt: str, content: str) -> str:
    return fmt.replace("{content}", content, 1)


def _check(messages: Sequence[Mapping]) -> None:
    expected = "user"
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatError(f"message {i} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatError(f"message {i} ({role}) has no text content")
        if role == "system":
            if i != 0:
                raise ChatError(f"message {i} is a system message; only the first message may be one")
            continue
        if role != expected:
            raise ChatError(f"message {i} is a {role} message where a {expected} message was expected "
                            f"(user and assistant alternate, starting with the user)")
        expected = "assistant" if role == "user" else "user"


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate(
            name="alpaca",
            description="the seed's instruction format (### Instruction / ### Input / ### Response), for fine-tuned models",
            default_system=ALPACA_PREAMBLE,
            system="{content}",
            user="\n\n### Instruction:\n{content}",
            input="\n\n### Input:\n{content}",
            assistant_prompt="\n\n### Response:\n",
            assistant="{content}",
            # No <|endoftext|> between turns: GPT-2 read it as a document boundary and would forget what came before.
            assistant_end="",
            # Section headers after one or two newlines; a Markdown "### Heading" in a reply does not stop it.
            stop=("\n### Instruction:", "\n### Input:", "\n### Response:"),
        ),
        ChatTemplate(
            name="plain",
            description="a User:/Assistant: transcript, for base models that were not instruction-tuned",
            default_system="A conversation between a user and a helpful assistant.",
            system="{content}\n\n",
            user="User: {content}\n",
            input="\n\n{content}",
            # No trailing space: GPT-2's words carry their leading space, so the reply's first token brings it.
            assistant_prompt="Assistant:",
            assistant=" {content}",
            assistant_end="\n",
            stop=("\nUser:", "\nAssistant:"),
        ),
    )
}


def template_for(source: Any = None) -> ChatTemplate:
    """The chat template of a model: from a template name, a config dict's `chat_template` field (a name, or a dict
    of `ChatTemplate` fields), a loaded model's `chat_template` attribute, or a `ChatTemplate`. Official base weights
    and checkpoints without the field get `plain`."""
    if isinstance(source, ChatTemplate):
        return source
    if isinstance(source, Mapping):
        source = source.get("chat_template")
    elif source is not None and not isinstance(source, str):
        source = getattr(source, "chat_template", None)
    if not source:
        return TEMPLATES["plain"]
    if isinstance(source, Mapping):
        return ChatTemplate.from_dict(source)
    if isinstance(source, str) and source in TEMPLATES:
        return TEMPLATES[source]
    raise ConfigError(f"unknown chat template {source!r}; known templates: {', '.join(TEMPLATES)}")


def format_instruction(instruction: str, input: str = "", output: str | None = None) -> str:
    """One seed record in the Alpaca format, exactly as the seed renders it; with `output=None`, the prompt up to and
    including "### Response:\\n". (Training appends <|endoftext|> as a token: see `encode_conversation`.)"""
    alpaca = TEMPLATES["alpaca"]
    return alpaca.render(alpaca.instruction_messages(instruction, input, output))


# -- tokens --------------------------------------------------------------------------------------------------------


def encode_conversation(
    tokenizer: Tokenizer, messages: Sequence[Mapping], template: ChatTemplate | str = "alpaca", eos: bool = True
) -> tuple[list[int], list[bool]]:
    """A conversation's ids for training, and which of them are the model's to learn: the replies (with the text
    closing them) and, when the conversation ends with a reply and `eos` is set, a final <|endoftext|>.

    Message text is encoded as plain text: a literal "<|endoftext|>" in a message is not the special token.
    """
    template = template_for(template)
    header, turns = template.layout(messages)
    enc = tokenizer.encode_ordinary
    ids = enc(header) if header else []
    learn = [False] * len(ids)
    for t in turns:
        prompt = [i for piece in (t.before, t.content, t.after) for i in enc(piece)]
        reply = [i for piece in t.reply for i in enc(piece)]
        ids += prompt + reply
        learn += [False] * len(prompt) + [True] * len(reply)
    if eos and turns and turns[-1].reply:
        ids.append(tokenizer.eot_token)
        learn.append(True)
    return ids, learn


# With no max_new_tokens set, a reply may take the room the prompt leaves in the window, up to this many tokens. A
# fixed default fit no window: 256 was a small model's whole window, so each reply was cut off and half the
# conversation left out.
AUTO_REPLY_CAP = 512


def reply_reserve(context_length: int, max_new_tokens: int | None) -> int:
    """Tokens kept free for the reply when a prompt is fitted: `max_new_tokens` when set; otherwise a quarter of the
    window, at most `AUTO_REPLY_CAP` (the reply then takes what the prompt leaves, see `reply_length`)."""
    if max_new_tokens is not None:
        return max_new_tokens
    return min(AUTO_REPLY_CAP, context_length // 4)


def prompt_budget(context_length: int, max_new_tokens: int | None) -> int:
    """Tokens a prompt may take: the window less the reply's room, but at least half the window (the rule of
    `generate.fit_prompt`, so a long `max_new_tokens` shortens the reply rather than the conversation). None: the
    reply's length follows the room left (`reply_reserve`)."""
    return max(context_length - reply_reserve(context_length, max_new_tokens), context_length // 2, 1)


def reply_length(context_length: int, prompt_tokens: int, max_new_tokens: int | None) -> int:
    """The most tokens a reply to a prompt of `prompt_tokens` may have: `max_new_tokens` when set, otherwise the room
    left in the window, at most `AUTO_REPLY_CAP`."""
    if max_new_tokens is not None:
        return max_new_tokens
    return max(1, min(AUTO_REPLY_CAP, context_length - prompt_tokens))


@dataclass(frozen=True)
class Prompt:
    """A conversation fitted to the window, with what was left out so the app can say so."""

    ids: list[int]
    turns_dropped: int  # oldest user/assistant pairs left out
    cut_tokens: int  # tokens cut from the start of the last user message (0: it is whole)
    budget: int  # tokens the prompt was allowed

    @property
    def message_cut(self) -> bool:
        return self.cut_tokens > 0


def turns_left_out(turns: int) -> str:
    """The context policy's note in words, for the app and the REPL alike: "the oldest turn was left out", "the 3
    oldest turns were left out"; "" for none."""
    if turns <= 0:
        return ""
    return "the oldest turn was left out" if turns == 1 else f"the {turns} oldest turns were left out"


def build_prompt(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: Sequence[Mapping],
    context_length: int,
    max_new_tokens: int | None,
) -> Prompt:
    """The ids to generate a reply to the last (user) message from, fitted to `prompt_budget`: the oldest whole turns
    go first; the header (system prompt or template preamble) always stays; if the last message alone is still too
    long, its beginning is cut and its end kept. Raises `ChatError` when even the header leaves no room."""
    if not messages or messages[-1].get("role") != "user":
        raise ChatError("a reply needs a conversation that ends with a user message")
    header, turns = template.layout(messages)
    enc = tokenizer.encode_ordinary
    header_ids = enc(header) if header else []
    history = [t.encode(enc) for t in turns[:-1]]
    last = turns[-1]
    before, content, after = enc(last.before), enc(last.content), enc(last.after)
    budget = prompt_budget(context_length, max_new_tokens)
    fixed = len(header_ids) + len(before) + len(after)
    total = fixed + len(content) + sum(map(len, history))
    dropped = 0
    while total > budget and dropped < len(history):
        total -= len(history[dropped])
        dropped += 1
    cut = max(0, total - budget)
    if cut and cut >= len(content):
        raise ChatError(
            f"the system prompt and template take {fixed} tokens, leaving no room for a message in the {budget} "
            f"tokens a prompt may use ({context_length}-token window, {reply_reserve(context_length, max_new_tokens)} "
            f"kept for the reply); shorten the system prompt or lower max new tokens"
        )
    ids = header_ids + [i for turn in history[dropped:] for i in turn] + before + content[cut:] + after
    return Prompt(ids=ids, turns_dropped=dropped, cut_tokens=cut, budget=budget)
