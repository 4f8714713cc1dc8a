"""Tokenizer: GPT-2's byte-level BPE behind one policy layer.

The policy lives here and nowhere else: special tokens (`allowed_special` / `disallowed_special`, exactly as
tiktoken), out-of-range ids, batching, and streaming decode that never splits a UTF-8 character. The merge loop is a
backend's job. This build's backend is tiktoken, built from the package's own copy of the GPT-2 ranks
(`assets/gpt2.tiktoken`), so nothing is downloaded at run time.
"""

from __future__ import annotations

import base64
import codecs
import functools
from collections.abc import Collection, Iterable, Sequence
from importlib import resources
from typing import AbstractSet, Literal

# GPT-2's pre-tokenisation: contractions, letters, numbers, other symbols, then white space (a run of spaces before a
# word leaves its last space to the word).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
BACKENDS = ("auto", "tiktoken")


@functools.lru_cache(maxsize=1)
def gpt2_ranks() -> dict[bytes, int]:
    """The 50,256 mergeable tokens and their ranks, read from the package data."""
    text = resources.files("gpt2tui").joinpath("assets/gpt2.tiktoken").read_text(encoding="ascii")
    ranks = {}
    for line in text.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def _tiktoken_encoding():
    import tiktoken

    ranks = gpt2_ranks()
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: len(ranks)},
        explicit_n_vocab=len(ranks) + 1,
    )


class Tokenizer:
    """GPT-2's encoding. `Tokenizer()` picks the best backend this installation has; `backend=` asks for one."""

    def __init__(self, backend: Literal["auto", "tiktoken"] = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown tokenizer backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        self.backend = "tiktoken"
        self._enc = _tiktoken_encoding()
        self.special_tokens = {ENDOFTEXT: self._enc.eot_token}
        self.eot_token = self._enc.eot_token
        self.n_vocab = self._enc.n_vocab

    def __repr__(self) -> str:
        return f"Tokenizer(backend={self.backend!r}, n_vocab={self.n_vocab})"

    # -- encoding --------------------------------------------------------------------------------------------------

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Token ids of `text`. Special tokens in the text raise unless allowed, as in tiktoken: text from a user must
        not be able to smuggle in `<|endoftext|>`; pass `allowed_special={"<|endoftext|>"}` (or "all") to encode it."""
        return self._enc.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, treating special-token text as plain text."""
        return self._enc.encode_ordinary(text)

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        num_threads: int = 8,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[list[int]]:
        """`encode` over many texts, in parallel threads."""
        return self._enc.encode_batch(
            list(texts), num_threads=num_threads, allowed_special=allowed_special, disallowed_special=disallowed_special
        )

    # -- decoding --------------------------------------------------------------------------------------------------

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.n_vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is out of range for this vocabulary (0 to {self.n_vocab - 1})")
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(self._check_ids(ids))

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of `ids`. A token sequence can end inside a UTF-8 character; `errors="replace"` shows that as U+FFFD,
        `errors="strict"` raises."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids arriving one at a time into text deltas, holding back the bytes of an unfinished UTF-8 character.

    The deltas concatenate to exactly `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Iterable[int]) -> str:
        return self._utf8.decode(self._tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        """What is left at the end: an unfinished character becomes U+FFFD, as in `decode`."""
        return self._utf8.decode(b"", final=True)
