"""WikiText-2 and WikiText-103 perplexity, per document, with a stated stride and detokeniser.

Method (lm-evaluation-harness's `wikitext` task, with the stride made a setting):

- Documents: the split's Wikipedia articles, each scored on its own, starting after `<|endoftext|>`.
- Detokeniser: lm-eval's `wikitext_detokenizer` (below), which undoes WikiText's tokenisation (` @-@ ` → `-`,
  ` , ` → `, `, spaces inside brackets and quotes, ...) so that GPT-2 reads text like what it was trained on.
- Stride: windows of the model's context length (1,024 for GPT-2); the first predicts its whole window, each next one
  the next `stride` tokens with the preceding text as context (`scoring.rolling_windows`). The default stride is the
  context length: disjoint windows, lm-eval's `loglikelihood_rolling`. A smaller stride gives each token more
  context (lower perplexity) at proportionally more compute; Hugging Face's perplexity guide uses 512.
- `token_perplexity` = exp(total NLL / GPT-2 tokens); `word_perplexity` = exp(total NLL / words), the words counted
  by splitting the *original* article on whitespace, as lm-eval does; `byte_perplexity` and `bits_per_byte` divide
  by the original article's UTF-8 bytes. The GPT-2 paper's WikiText-2 figure (29.41 for 124M) is a word-level
  perplexity with OpenAI's own invertible detokenisers and an unstated stride: comparable in kind, not digit for digit.

Data: the raw release's split file (`wiki.test.raw` of wikitext-2-raw-v1 or wikitext-103-raw-v1; plain text, gzip
allowed), cut into articles at each level-1 heading (` = Title = `); or records with a `page` field (one article
each, as `EleutherAI/wikitext_document_level`) or a `text` field (one line each, as `Salesforce/wikitext`, joined and
cut as the raw file) in any format `files.py` reads. Without `--data`: `EleutherAI/wikitext_document_level`'s test
split through `datasets`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from gpt2tui.errors import DataError

from . import files
from .scoring import Pair, Score, encode, rolling_windows

HUB = {
    "wikitext-2": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test"),
    "wikitext-103": ("EleutherAI/wikitext_document_level", "wikitext-103-raw-v1", "test"),
}
PUBLISHED = {"gpt2": {"word_perplexity": 29.41}}  # the GPT-2 paper, WikiText-2 (its own detokenisers)


def detokenize(text: str) -> str:
    """lm-evaluation-harness's `wikitext_detokenizer` (MIT licence), rule for rule."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for mark in (":", ";", ".", "!", "?", ","):
        text = text.replace(f" {mark} ", f"{mark} ")
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    text = text.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    text = text.replace(" " + chr(176) + " ", chr(176))
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    text = text.replace(" N ", " 1 ")
    return text.replace(" 's", "'s")


def _is_title(line: str) -> bool:
    s = line.strip()
    return s.startswith("= ") and s.endswith(" =") and not s.startswith("= =")


def split_articles(text: str) -> list[str]:
    """A raw split file's articles: each starts at a level-1 heading line (` = Title = `) and runs to the next."""
    articles: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _is_title(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    return [a for a in ("".join(lines) for lines in articles) if a.strip()]


def load(data: str | None, limit: int | None, task: str = "wikitext-2") -> list[str]:
    if data and files._suffixes(Path(data))[0] in files.TEXT_SUFFIXES:
        pages = split_articles(files.read_text(data))
    else:
        records = files.read_records(data) if data else files.from_hub(*HUB[task])
        pages, lines = [], []
        for where, record in records:
            if "page" in record:
                pages.append(files.field(record, "page", str, where))
            elif "text" in record:
                lines.append(files.field(record, "text", str, where))
            else:
                raise DataError(f"{where}: neither a 'page' (an article) nor a 'text' (a line) field")
            if limit is not None and len(pages) >= limit:
                break
        # Salesforce/wikitext's rows keep their newline ("" for a blank line); rows without one are lines all the same.
        pages += split_articles("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return pages[:limit] if limit is not None else pages


def evaluate(
    pages: list[str],
    tokenizer,
    scorer: Callable[[list[Pair]], list[Score]],
    context_length: int,
    stride: int | None = None,
) -> dict:
    stride = stride or context_length
    if not 1 <= stride <= context_length:
        raise DataError(
            f"--stride {stride} must be between 1 and the model's context length {context_length}"
        )
    pairs: list[Pair] = []
    for page in pages:
        pairs += rolling_windows(
            encode(tokenizer, detokenize(page)), tokenizer.eot_token, context_length, stride
        )
    scores = scorer(pairs)
    nll = -sum(s.logprob for s in scores)
    tokens = sum(s.n_tokens for s in scores)
    words = sum(len(re.split(r"\s+", page)) for page in pages)
    nbytes = sum(len(page.encode("utf-8")) for page in pages)
    metrics = {
        "word_perplexity": math.exp(nll / words),
        "token_perplexity": math.exp(nll / tokens),
        "byte_perplexity": math.exp(nll / nbytes),
        "bits_per_byte": nll / nbytes / math.log(2),
    }
    return {
        "metrics": metrics,
        "examples": len(pages),
        "tokens": tokens,
        "words": words,
        "bytes": nbytes,
        "method": {
            "documents": "each article scored on its own after <|endoftext|>",
            "detokenizer": "lm-evaluation-harness wikitext_detokenizer",
            "window": context_length,
            "stride": stride,
            "word_perplexity": "exp(NLL / words of the original article split on whitespace), as lm-eval",
        },
    }
