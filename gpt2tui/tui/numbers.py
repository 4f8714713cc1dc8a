"""The numbers the chat shows about a conversation, in words: token counts under each message, and the warning that
comes before the context policy starts leaving the oldest turns out of the prompt."""

from __future__ import annotations

from ..chat import prompt_budget

# Warn once the conversation takes this share of what a prompt may use: the next turn or two push the oldest out.
NEAR_FULL = 0.8


def tokens(n: int) -> str:
    return f"{n:,} token" + ("" if n == 1 else "s")


def message_numbers(role: str, count: int, prompt: int | None = None, rate: float | None = None) -> str:
    """A message's line of numbers: "12 tokens"; a reply's "reply 45 tokens · prompt 120 · 23.1 tok/s"."""
    if role != "assistant":
        return tokens(count)
    parts = [f"reply {tokens(count)}"]
    if prompt is not None:
        parts.append(f"prompt {prompt:,}")
    if rate is not None:
        parts.append(f"{rate:.1f} tok/s")
    return " · ".join(parts)


def budget_for(window: int, max_new_tokens: int | None) -> int:
    """What a prompt may take of `window` under these settings (`chat.prompt_budget`)."""
    return prompt_budget(window, max_new_tokens if isinstance(max_new_tokens, int) and max_new_tokens > 0 else None)


def near_full_warning(used: int, budget: int) -> str:
    """Said before the oldest turns start to drop out: "" while the conversation is well inside the budget."""
    if budget <= 0 or used < NEAR_FULL * budget:
        return ""
    return (
        f"This conversation uses {used:,} of the {budget:,} tokens a prompt may take: from the next messages on, "
        "the oldest turns will be left out of what the model reads (Ctrl+N starts afresh)"
    )
