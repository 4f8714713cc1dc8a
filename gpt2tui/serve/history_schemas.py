"""Requests and responses of the conversation-history routes (`/api/conversations`), which the chat page uses.

These are our own routes, not OpenAI's: requests are strict about types and refuse fields they do not know, so a
typo in a field name is a 400 that names it rather than a change silently not made.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..session import FINISH_REASONS

MAX_TITLE = 200  # characters; the apps show titles on one line
# A message is bounded by the request body (--max-body, 1 MiB) already; this keeps one row of the history sane too.
MAX_CONTENT = 1 << 19

FinishReason = Literal[FINISH_REASONS]  # the chat app's words: "eos", "stop", "max_tokens", "cancelled", ...


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class NewConversation(_Request):
    """A new, empty conversation. `title`: by default "New chat"; the page sends its first message, which the
    server shortens as the chat app does."""

    title: str | None = Field(None, max_length=MAX_TITLE * 4)


class Rename(_Request):
    title: str = Field(min_length=1, max_length=MAX_TITLE)


class NewMessage(_Request):
    """A message appended under the conversation's active leaf. The page writes the user's message, then the reply
    empty (`finish_reason` None: still streaming) and fills it in with `MessageUpdate` as it streams."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT)
    finish_reason: FinishReason | None = None


class MessageUpdate(_Request):
    content: str = Field(max_length=MAX_CONTENT)
    finish_reason: FinishReason | None = None


# -- responses -----------------------------------------------------------------------------------------------------


class MessageOut(BaseModel):
    id: int
    parent_id: int | None
    role: Literal["system", "user", "assistant"]
    content: str
    finish_reason: str | None
    created: float


class Sampling(BaseModel):
    """What a reply in this conversation is sampled with, in the chat API's words: the conversation's own settings
    (as the chat app saved them, or its defaults), less what the API has no field for (top-k, repetition penalty)."""

    system_prompt: str
    temperature: float
    top_p: float | None
    seed: int | None


class ConversationSummary(BaseModel):
    id: int
    title: str
    model: str
    created: float
    updated: float


class ConversationOut(ConversationSummary):
    messages: list[MessageOut]  # the path shown, root first: what the chat app shows
    sampling: Sampling
    # False while another gpt2tui (the terminal app) holds it: it can be read here, not written.
    writable: bool


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]
