"""Tokenizer: GPT-2's byte-level BPE behind one policy layer.

The policy lives here and nowhere else: special tokens (`allowed_special` / `disallowed_special`, exactly as
tiktoken), the lone-surrogate fix-up, out-of-range ids, batching, and streaming decode that never splits a UTF-8
character. A backend only pre-tokenises and merges ("encode ordinary text") and maps ids back to bytes:

- ``"cpp"``: the C++ extension `gpt2tui._bpe` (csrc/), the default when it is built;
- ``"tiktoken"``: OpenAI's encoder, the fallback when the extension is not built;
- ``"python"``: `gpt2tui/bpe_python.py`, a short pure-Python BPE that explains the algorithm (slow; an oracle).

All three read the package's own copy of the GPT-2 ranks (`assets/gpt2.tiktoken`): nothing is downloaded at run time.
"""

from __future__ import annotations

import base64
import codecs
import functools
import operator
import re
import warnings
from collections.abc import Collection, Iterable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import TYPE_CHECKING, Literal

from .bpe_python import GPT2_PATTERN, PythonBPE

if TYPE_CHECKING:
    import numpy as np

ENDOFTEXT = "<|endoftext|>"
BACKENDS = ("auto", "cpp", "tiktoken", "python")


class TokenizerFallbackWarning(RuntimeWarning):
    """The C++ encoder is not built, so tokenization falls back to tiktoken."""


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


def _special_tokens() -> dict[str, int]:
    return {ENDOFTEXT: len(gpt2_ranks())}


@functools.lru_cache(maxsize=1)
def _tiktoken_encoding():
    import tiktoken  # deferred: only the tiktoken backend, a fallback, needs it

    ranks = gpt2_ranks()
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=_special_tokens(),
        explicit_n_vocab=len(ranks) + 1,
    )


def native_available() -> bool:
    try:
        from . import _bpe  # where the extension is not built, tiktoken stands in
    except ImportError:
        return False
    return hasattr(_bpe, "Encoder")


# -- backends: encode ordinary text, and ids → bytes ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _native_core():
    from . import _bpe  # deferred: optional (native_available)

    ranks = gpt2_ranks()
    tokens = sorted(ranks, key=ranks.__getitem__)
    return _bpe.Encoder(tokens, [s.encode() for s in _special_tokens()])


class _TiktokenCore:
    def __init__(self):
        self.enc = _tiktoken_encoding()
        self.n_vocab = self.enc.n_vocab

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_ordinary_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return self._map(self.encode_ordinary, texts, num_threads)

    def encode_ordinary_buffer(self, text: str):
        return self.enc.encode_to_numpy(text, disallowed_special=())

    def encode_ordinary_batch_buffers(self, texts: list[str], num_threads: int) -> list:
        return self._map(self.encode_ordinary_buffer, texts, num_threads)

    @staticmethod
    def _map(fn, texts: list[str], num_threads: int) -> list:
        if num_threads <= 1 or len(texts) <= 1:
            return [fn(t) for t in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(fn, texts))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ids = _checked_ids(ids, self.n_vocab)
        return self.enc.decode_bytes(ids)


class _PythonCore:
    def __init__(self):
        self.bpe = PythonBPE(gpt2_ranks(), [s.encode() for s in _special_tokens()])
        self.n_vocab = self.bpe.n_vocab

    def encode_ordinary(self, text: str) -> list[int]:
        return self.bpe.encode_ordinary(text)

    def encode_ordinary_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return [self.bpe.encode_ordinary(t) for t in texts]

    def encode_ordinary_buffer(self, text: str):
        import numpy as np  # deferred (~0.1 s): only array outputs need it

        return np.asarray(self.bpe.encode_ordinary(text), dtype=np.uint32)

    def encode_ordinary_batch_buffers(self, texts: list[str], num_threads: int) -> list:
        return [self.encode_ordinary_buffer(t) for t in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ids = _checked_ids(ids, self.n_vocab)
        return self.bpe.decode_bytes(ids)


def _checked_ids(ids: Sequence[int], n_vocab: int) -> list[int]:
    """The ids as Python ints (TypeError for anything that is not an integer), each in range, as the native core
    checks them."""
    ids = [operator.index(i) for i in ids]
    bad = next((i for i in ids if not 0 <= i < n_vocab), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is out of range for this vocabulary (0 to {n_vocab - 1})")
    return ids


def _repairing(encode, texts, *args):
    """`encode(texts, *args)` (one str or a list of them), again with lone surrogates repaired if it could not encode
    them: a Python str may hold UTF-16 surrogates, which have no UTF-8 form."""
    try:
        return encode(texts, *args)
    except UnicodeEncodeError:
        fixed = _fix_surrogates(texts) if isinstance(texts, str) else [_fix_surrogates(t) for t in texts]
        return encode(fixed, *args)


def _fix_surrogates(text: str) -> str:
    # A Python str may hold UTF-16 surrogates, which have no UTF-8 form. As tiktoken does: join the pairs into the
    # characters they spell and replace lone ones with U+FFFD.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@functools.lru_cache(maxsize=16)
def _special_regex(tokens: frozenset[str]) -> re.Pattern:
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


class Tokenizer:
    """GPT-2's encoding. `Tokenizer()` uses the C++ encoder when it is built, else tiktoken (with a notice);
    `backend=` asks for one by name."""

    def __init__(self, backend: Literal["auto", "cpp", "tiktoken", "python"] = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown tokenizer backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        if backend == "auto":
            backend = "cpp" if native_available() else "tiktoken"
            if backend == "tiktoken":
                warnings.warn(
                    "the C++ tokenizer (gpt2tui._bpe) is not built, using tiktoken; run `make install` to build it",
                    TokenizerFallbackWarning,
                    stacklevel=2,
                )
        elif backend == "cpp" and not native_available():
            raise ImportError("the C++ tokenizer (gpt2tui._bpe) is not built; run `make install` to build it")
        self.backend = backend
        self._core = {"cpp": _native_core, "tiktoken": _TiktokenCore, "python": _PythonCore}[backend]()
        self.special_tokens = _special_tokens()
        self.special_tokens_set = frozenset(self.special_tokens)
        self.eot_token = self.special_tokens[ENDOFTEXT]
        self.n_vocab = self._core.n_vocab

    def __repr__(self) -> str:
        return f"Tokenizer(backend={self.backend!r}, n_vocab={self.n_vocab})"

    # -- encoding --------------------------------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, treating special-token text as plain text."""
        return _repairing(self._core.encode_ordinary, text)

    def _policy(self, allowed_special, disallowed_special) -> tuple[frozenset[str], frozenset[str]]:
        """The special tokens to encode as such, and those whose text must not appear."""
        allowed = self.special_tokens_set if allowed_special == "all" else frozenset(allowed_special)
        if disallowed_special == "all":
            return allowed & self.special_tokens_set, self.special_tokens_set - allowed
        return allowed & self.special_tokens_set, frozenset(disallowed_special)

    @staticmethod
    def _check(text: str, disallowed: frozenset[str]) -> None:
        # tiktoken's rule: text from a user must not smuggle in `<|endoftext|>` unless the caller says so.
        if not disallowed:
            return
        if len(disallowed) == 1 and next(iter(disallowed)) not in text:
            return  # GPT-2's usual case: a substring test is ~3x quicker than the regex, per text of a batch
        if match := _special_regex(disallowed).search(text):
            token = match.group()
            raise ValueError(
                f"text contains the special token {token!r}; pass allowed_special={{{token!r}}} to encode it as that "
                f"token, or disallowed_special=() to encode it as plain text"
            )

    def _split(self, text: str, allowed: frozenset[str]) -> list[str | int]:
        """Ordinary text segments and special-token ids, in order."""
        parts: list[str | int] = []
        start = 0
        for m in _special_regex(allowed).finditer(text):
            parts.append(text[start : m.start()])
            parts.append(self.special_tokens[m.group()])
            start = m.end()
        parts.append(text[start:])
        return parts

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Token ids of `text`. Special tokens in the text raise unless allowed, as in tiktoken; pass
        `allowed_special={"<|endoftext|>"}` (or "all") to encode them as themselves, `disallowed_special=()` to
        encode them as plain text."""
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        self._check(text, disallowed)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for part in self._split(text, allowed):
            if isinstance(part, int):
                ids.append(part)
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        num_threads: int = 8,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[list[int]]:
        """`encode` over many texts; the C++ backend runs them in parallel native threads."""
        texts = list(texts)
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        for t in texts:
            self._check(t, disallowed)
        if not allowed:
            return self._encode_ordinary_batch(texts, num_threads)
        # Special tokens split each text into ordinary segments; encode every segment in one parallel batch.
        split = [self._split(t, allowed) for t in texts]
        segments = [p for parts in split for p in parts if isinstance(p, str)]
        encoded = iter(self._encode_ordinary_batch(segments, num_threads))
        return [[i for p in parts for i in ([p] if isinstance(p, int) else next(encoded))] for parts in split]

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        """`encode_ordinary` over many texts, in parallel."""
        return self._encode_ordinary_batch(list(texts), num_threads)

    def _encode_ordinary_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return _repairing(self._core.encode_ordinary_batch, texts, num_threads)

    # Each backend hands back uint32 ids in a buffer (the C++ one a bytearray, filled without a Python int per token:
    # on English text those ints, and numpy's reading of them, cost as much as the encoding).

    def encode_to_numpy(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> np.ndarray:
        """`encode`, as a numpy uint32 array (tiktoken's `encode_to_numpy`)."""
        import numpy as np  # deferred (~0.1 s): only array outputs need it

        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        self._check(text, disallowed)
        if not allowed:
            return self._ordinary_numpy(text)
        parts = [np.array([p], dtype=np.uint32) if isinstance(p, int) else self._ordinary_numpy(p)
                 for p in self._split(text, allowed)]
        return np.concatenate(parts)

    def encode_ordinary_batch_to_numpy(self, texts: Sequence[str], *, num_threads: int = 8) -> list[np.ndarray]:
        """`encode_ordinary_batch`, each text's ids as a numpy uint32 array: the form training data is stored in."""
        import numpy as np  # deferred (~0.1 s): only array outputs need it

        buffers = _repairing(self._core.encode_ordinary_batch_buffers, list(texts), num_threads)
        return [np.frombuffer(b, dtype=np.uint32) for b in buffers]

    def _ordinary_numpy(self, text: str) -> np.ndarray:
        import numpy as np  # deferred (~0.1 s): only array outputs need it

        return np.frombuffer(_repairing(self._core.encode_ordinary_buffer, text), dtype=np.uint32)

    # -- decoding --------------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        # Every core reads a list or tuple of integers and checks their range (the native one in C++, per id).
        if not isinstance(ids, (list, tuple)):
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy arrays, torch tensors, iterators
        return self._core.decode_bytes(ids)

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
