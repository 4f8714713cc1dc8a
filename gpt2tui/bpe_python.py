"""GPT-2's byte-level BPE in a page of Python: the readable twin of csrc/bpe.cpp and its test oracle.

Encoding is two steps.

1. Pre-tokenise: split the text with GPT-2's pattern into pieces (words with their leading space, numbers, runs of
   punctuation, white space). Merges never cross a piece boundary.
2. Merge: start from the piece's bytes, each a token of its own, and repeatedly join the adjacent pair whose joined
   bytes form the token of lowest rank (the leftmost pair on ties), until no adjacent pair forms a token.

The C++ core does the same with a heap over pairs and a hash map keyed by the two ids, so a merge never rescans
the piece; this version rescans it every time, which is quadratic and fine for reading.
"""

from __future__ import annotations

import regex

# GPT-2's pre-tokenisation: contractions, letters, numbers, other symbols, then white space (a run of spaces before a
# word leaves its last space to the word). Every backend splits with it; the C++ core matches it by hand.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class PythonBPE:
    def __init__(self, ranks: dict[bytes, int], extra: list[bytes] = ()):
        self.ranks = ranks
        self.pattern = regex.compile(GPT2_PATTERN)
        self.decoder = [b""] * len(ranks)
        for token, rank in ranks.items():
            self.decoder[rank] = token
        self.decoder += list(extra)
        self.n_vocab = len(self.decoder)

    def encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            ids.extend(self.merge(piece.encode("utf-8")))
        return ids

    def merge(self, piece: bytes) -> list[int]:
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            pair_ranks = [self.ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
            candidates = [(r, i) for i, r in enumerate(pair_ranks) if r is not None]
            if not candidates:
                break
            _, i = min(candidates)  # lowest rank, then leftmost
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return [self.ranks[p] for p in parts]

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.decoder[i] for i in ids)
