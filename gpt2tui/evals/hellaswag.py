"""HellaSwag: pick the ending of a short scene (4 choices), scored completion-style.

Two methods, each under its own name:

- `acc`, `acc_norm`: build-nanogpt's and llm.c's (`hellaswag.py` there). The context is the record's `ctx`, encoded
  alone; each ending is `" " + ending`, encoded alone. `acc` picks the ending with the lowest summed loss, `acc_norm`
  the lowest mean loss per ending token. GPT-2 124M: acc_norm 0.2955 by this method.
- `lm_eval_acc`, `lm_eval_acc_norm`: lm-evaluation-harness's `hellaswag` task. The query is
  `activity_label + ": " + ctx_a + " " + ctx_b.capitalize()`, with the WikiHow bracket artefacts removed from it and
  from the endings (its `preprocess`); context and `" " + ending` are encoded together and split (its `_encode_pair`);
  `lm_eval_acc_norm` divides each ending's log-likelihood by its length in characters. GPT-2 124M: 0.311.

Data: the original release's JSON lines (`hellaswag_val.jsonl`: `ctx`, `ctx_a`, `ctx_b`, `activity_label`,
`endings`, `label`) or the Hugging Face `Rowan/hellaswag` dataset (the same fields, `label` a string) in any format
`files.py` reads; without `--data`, its validation split through `datasets`. Records without `activity_label`,
`ctx_a` and `ctx_b` are scored by the first method only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from gpt2tui.errors import DataError

from . import files
from .scoring import Pair, Score, encode, encode_pair

NAME = "hellaswag"
HUB = ("Rowan/hellaswag", None, "validation")
PUBLISHED = {"gpt2": {"acc_norm": 0.2955, "lm_eval_acc_norm": 0.311}}


@dataclass(frozen=True)
class Example:
    ctx: str
    endings: tuple[str, ...]
    label: int
    query: str | None  # lm-eval's preprocessed query, where the record has its parts


def preprocess(text: str) -> str:
    """lm-eval's clean-up of HellaSwag text: WikiHow's `[title]` becomes a full stop, other `[...]` tags go."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def parse(record: dict, where: str) -> Example:
    endings = files.field(record, "endings", list, where)
    if len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise DataError(f"{where}: 'endings' must be a list of at least two strings")
    label = files.field(record, "label", (int, str), where)
    try:
        label = int(label)
    except ValueError:
        raise DataError(
            f"{where}: 'label' {label!r} is not an ending's index (0 to {len(endings) - 1})"
        ) from None
    if not 0 <= label < len(endings):
        raise DataError(f"{where}: 'label' {label} is not an ending's index (0 to {len(endings) - 1})")
    parts = [record.get(k) for k in ("activity_label", "ctx_a", "ctx_b")]
    query = None
    if all(isinstance(p, str) for p in parts):
        query = preprocess(f"{parts[0]}: {parts[1]} {parts[2].capitalize()}")
    return Example(files.field(record, "ctx", str, where), tuple(endings), label, query)


def load(data: str | None, limit: int | None) -> list[Example]:
    records = files.read_records(data) if data else files.from_hub(*HUB)
    examples = []
    for where, record in records:
        if limit is not None and len(examples) >= limit:
            break
        examples.append(parse(record, where))
    return examples


def evaluate(examples: list[Example], tokenizer, scorer: Callable[[list[Pair]], list[Score]]) -> dict:
    with_query = all(e.query is not None for e in examples)
    pairs: list[Pair] = []
    for e in examples:
        ctx = encode(tokenizer, e.ctx)
        pairs += [(ctx, encode(tokenizer, " " + ending)) for ending in e.endings]
    if with_query:
        for e in examples:
            pairs += [encode_pair(tokenizer, e.query, " " + preprocess(ending)) for ending in e.endings]
    scores = scorer(pairs)
    acc = acc_norm = lm_acc = lm_acc_norm = 0
    i = j = 0
    for e in examples:
        mine = scores[i : i + len(e.endings)]
        i += len(e.endings)
        acc += _argmin([-s.logprob for s in mine]) == e.label
        acc_norm += _argmin([-s.logprob / s.n_tokens for s in mine]) == e.label
        if with_query:
            theirs = scores[len(scores) // 2 + j : len(scores) // 2 + j + len(e.endings)]
            j += len(e.endings)
            lm_acc += _argmax([s.logprob for s in theirs]) == e.label
            chars = [len(preprocess(ending)) for ending in e.endings]
            lm_acc_norm += _argmax([s.logprob / n for s, n in zip(theirs, chars, strict=True)]) == e.label
    n = len(examples)
    metrics = {"acc": acc / n, "acc_norm": acc_norm / n}
    if with_query:
        metrics.update(lm_eval_acc=lm_acc / n, lm_eval_acc_norm=lm_acc_norm / n)
    return {
        "metrics": metrics,
        "examples": n,
        "method": {
            "acc, acc_norm": "build-nanogpt/llm.c: ctx and ' ' + ending encoded apart; acc: lowest summed loss, "
            "acc_norm: lowest mean loss per ending token",
            "lm_eval_acc, lm_eval_acc_norm": "lm-evaluation-harness hellaswag: preprocessed activity_label: ctx_a "
            "ctx_b query, encoded with the ending and split; acc_norm: highest "
            "log-likelihood per ending character"
            + ("" if with_query else " (not computed: records lack activity_label, ctx_a or ctx_b)"),
        },
    }


def _argmin(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)  # the first of equals, as torch's and numpy's


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))
