"""The native core's two merge paths, and what it reports about itself.

`gpt2tui._bpe.Encoder` encodes pieces shorter than `backtrack_min_len` by merging in rank order and longer ones by
backtracking; both must give tiktoken's ids. Here each path is forced onto every piece and checked against the
other and against tiktoken.
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2tui import _bpe
from gpt2tui.tokenizer import _tiktoken_encoding, gpt2_ranks


def _encoder(backtrack_min_len: int):
    ranks = gpt2_ranks()
    return _bpe.Encoder(sorted(ranks, key=ranks.__getitem__), [b"<|endoftext|>"], backtrack_min_len=backtrack_min_len)


@pytest.fixture(scope="module")
def paths():
    """(always backtracking, never backtracking, tiktoken)."""
    return _encoder(2), _encoder(1 << 62), _tiktoken_encoding()


ALPHABETS = ["ab", "abcdefghijklmnopqrstuvwxyz", "0123456789", "01", "!?.,;:-=+*/", "аб", "日本語漢字", "aeiou",
             "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"]


@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_both_paths_equal_tiktoken_on_long_runs(paths, alphabet):
    backtrack, merge, tk = paths
    rng = random.Random(alphabet)
    for length in (3, 17, 100, 1000, 5000):
        text = "".join(rng.choice(alphabet) for _ in range(length))
        want = tk.encode_ordinary(text)
        assert backtrack.encode_ordinary(text) == want
        assert merge.encode_ordinary(text) == want


@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from(list(" \t\n\u00a0\u3000'sdmtlvreSLLabc123٣!?.,🤖é\u0301漢")), max_size=40))
def test_both_paths_equal_tiktoken_on_tricky_text(paths, text):
    backtrack, merge, tk = paths
    want = tk.encode_ordinary(text)
    assert backtrack.encode_ordinary(text) == want
    assert merge.encode_ordinary(text) == want


def test_every_token_encodes_to_itself_through_both_paths(paths):
    backtrack, merge, tk = paths
    ranks = gpt2_ranks()
    sample = [t for t in ranks if len(t) > 3][::25]
    for token in sample:
        text = token.decode("utf-8", errors="ignore")
        if text:
            want = tk.encode_ordinary(text)
            assert backtrack.encode_ordinary(text) == want == merge.encode_ordinary(text)


def test_core_reports_unicode_version_and_vocabulary():
    assert _bpe.UNICODE_VERSION == "16.0.0"  # the Unicode version of Rust's regex crate, which tiktoken uses
    assert _encoder(64).n_vocab == 50257


def test_a_vocabulary_without_every_byte_is_refused():
    with pytest.raises(ValueError, match="single-byte token"):
        _bpe.Encoder([b"a", b"b"])


def test_decode_of_a_bad_id_raises_value_error():
    enc = _encoder(64)
    assert enc.decode_bytes([15496, 995, 50256]) == b"Hello world<|endoftext|>"
    with pytest.raises(ValueError, match="token id 50257 is out of range"):
        enc.decode_bytes([50257])
    with pytest.raises(ValueError, match="token id -3 is out of range"):
        enc.decode_bytes([-3])
