"""LAMBADA, OpenAI's version (`lambada_openai`): predict a passage's last word, which needs the whole passage.

Each passage is split at its last space: the context is everything before it, the target is `" " + last word`,
encoded together and split as lm-eval does (`scoring.encode_pair`). Metrics, as lm-eval's `lambada_openai`:

- `acc`: the share of passages whose every target token is the model's greedy choice;
- `perplexity`: `exp` of the mean over passages of the negative log-likelihood of the whole last word;
- `token_perplexity`: the same log-likelihood per token of the last words (`exp(total NLL / their tokens)`).

GPT-2 124M: acc 0.3256 in lm-eval. The GPT-2 paper's perplexity, 35.13, came from OpenAI's own preprocessing of
the passages, which lm-eval does not repeat: the two perplexities are different measurements.

Data: OpenAI's `lambada_test.jsonl` (one `{"text": ...}` a line) or the Hugging Face `EleutherAI/lambada_openai`
dataset in any format `files.py` reads, or a plain text file with one passage a line; without `--data`, its test
split through `datasets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from gpt2tui.errors import DataError

from . import files
from .scoring import Pair, Score, encode_pair

NAME = "lambada"
HUB = ("EleutherAI/lambada_openai", "default", "test")
PUBLISHED = {"gpt2": {"acc": 0.3256}}


def split_passage(text: str, where: str) -> tuple[str, str]:
    """(context, " " + last word), as lm-eval's `lambada_openai` templates split a passage."""
    words = text.split(" ")
    if len(words) < 2 or not words[-1]:
        raise DataError(f"{where}: a passage needs a space before its last word, and no space after it")
    return " ".join(words[:-1]), " " + words[-1]


def load(data: str | None, limit: int | None) -> list[tuple[str, str]]:
    if data and files._suffixes(Path(data))[0] in files.TEXT_SUFFIXES:
        lines = files.read_text(data).splitlines()
        records = ((f"{data}:{n}", {"text": line}) for n, line in enumerate(lines, 1) if line.strip())
    else:
        records = files.read_records(data) if data else files.from_hub(*HUB)
    examples = []
    for where, record in records:
        if limit is not None and len(examples) >= limit:
            break
        examples.append(split_passage(files.field(record, "text", str, where), where))
    return examples


def evaluate(examples: list[tuple[str, str]], tokenizer, scorer: Callable[[list[Pair]], list[Score]]) -> dict:
    scores = scorer([encode_pair(tokenizer, ctx, target) for ctx, target in examples])
    n = len(scores)
    mean_nll = -sum(s.logprob for s in scores) / n
    tokens = sum(s.n_tokens for s in scores)
    metrics = {
        "acc": sum(s.greedy for s in scores) / n,
        "perplexity": math.exp(mean_nll),
        "token_perplexity": math.exp(mean_nll * n / tokens),
    }
    return {
        "metrics": metrics,
        "examples": n,
        "method": {
            "acc": "lm-eval lambada_openai: every token of ' ' + last word is the greedy choice",
            "perplexity": "exp(mean over passages of the last word's negative log-likelihood), as lm-eval",
            "token_perplexity": "exp(the last words' negative log-likelihood / their GPT-2 tokens), all passages",
        },
    }
