"""The native core's merge paths, and what it reports about itself.

`gpt2tui._bpe.Encoder` encodes pieces shorter than `long_piece_len` by merging in rank order. Longer ones go window by
window (each window merged, or backtracked where tokens run long, with a seam check between windows), or, with
`window=0`, by backtracking the whole piece. Pieces of four windows or more run as two halves at once, joined by one
more checked seam. All must give tiktoken's ids. Here each path is forced onto every piece, including windows so
small, and margins so thin, that seams fail (the halves' join among them) and the whole-piece fallback runs.
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2tui import _bpe
from gpt2tui.tokenizer import _tiktoken_encoding, gpt2_ranks

# name -> Encoder settings (long_piece_len, window, margin)
PATHS = {
    "merge": (1 << 62, 256, 16),           # never the long-piece path
    "backtrack": (2, 0, 0),                # every piece backtracked whole
    "windows": (2, 256, 16),               # the defaults, on every piece (two halves from 1024 bytes)
    "small_windows": (2, 9, 3),            # many seams, and two halves from 36 bytes
    "no_margin": (2, 6, 0),                # seams that fail, so the whole-piece fallback runs
    "huge_window": (2, 1 << 62, 16),       # one window per piece, whatever its length
}


def _encoder(long_piece_len: int = 64, window: int = 256, margin: int = 16):
    ranks = gpt2_ranks()
    return _bpe.Encoder(sorted(ranks, key=ranks.__getitem__), [b"<|endoftext|>"], long_piece_len=long_piece_len,
                        window=window, margin=margin)


@pytest.fixture(scope="module")
def paths():
    return {name: _encoder(*settings_) for name, settings_ in PATHS.items()}


@pytest.fixture(scope="module")
def tk():
    return _tiktoken_encoding()


def _assert_all_paths(paths, tk, text):
    want = tk.encode_ordinary(text)
    for name, enc in paths.items():
        assert enc.encode_ordinary(text) == want, name


ALPHABETS = ["ab", "abcdefghijklmnopqrstuvwxyz", "0123456789", "01", "!?.,;:-=+*/", "аб", "日本語漢字", "aeiou",
             "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"]


@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_every_path_equals_tiktoken_on_long_runs(paths, tk, alphabet):
    rng = random.Random(alphabet)
    for length in (3, 17, 100, 1000, 5000):
        _assert_all_paths(paths, tk, "".join(rng.choice(alphabet) for _ in range(length)))


@pytest.mark.parametrize("text", ["a" * 3000, "0" * 3000, "ab" * 1500, "🤖" * 700, "aa" * 700 + "b" + "a" * 900,
                                  "".join(random.Random(7).choice(["the", "and", "token", "ation", "ing", "un"])
                                          for _ in range(800))])
def test_every_path_equals_tiktoken_where_tokens_run_long(paths, tk, text):
    # Long tokens switch the windows to backtracking, and back to merging where they end.
    _assert_all_paths(paths, tk, text)


@pytest.mark.parametrize("text", ["a" * 20000, "a" * 9000 + "b" + "a" * 9000, "ab" * 6000, "xyz" * 5000,
                                  "🤖" * 3000, "kQz8Pw" * 2000 + "!", "0" * 20000 + "1"])
def test_every_path_equals_tiktoken_on_periodic_text(paths, tk, text):
    # A window that repeats the last one byte for byte reuses its tokens.
    _assert_all_paths(paths, tk, text)


@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from(list(" \t\n\u00a0\u3000'sdmtlvreSLLabc123٣!?.,🤖é\u0301漢")), max_size=40))
def test_every_path_equals_tiktoken_on_tricky_text(paths, tk, text):
    _assert_all_paths(paths, tk, text)


@settings(max_examples=150, deadline=None)
@given(st.text(st.sampled_from(list("0123456789")) | st.sampled_from(list("abcxyzQ")), min_size=10, max_size=300))
def test_every_path_equals_tiktoken_on_long_pieces(paths, tk, text):
    _assert_all_paths(paths, tk, text)


@pytest.mark.parametrize("text", [
    "x" * 20 + "é" + "y" * 20,                       # an ASCII run that the vector scan leaves at a non-ASCII letter
    "Straße" * 5 + "ﬁ" + "ABCdefGHIjklMNOpqrSTUvwx" * 3,
    "0123456789" * 3 + "١٢٣" + "9876543210" * 3,      # Arabic-Indic digits continue an ASCII number
    "12345678901234567" + "abc" + "12345678901234567",
    " " + "q" * 15, " " + "q" * 16, " " + "q" * 17,   # runs around one vector's length, led by a space
    "a" * 15 + "\x80", "9" * 31 + "\ufffd" + "9",
])
def test_every_path_equals_tiktoken_across_ascii_and_unicode_runs(paths, tk, text):
    _assert_all_paths(paths, tk, text)


def test_every_token_encodes_to_itself_through_every_path(paths, tk):
    ranks = gpt2_ranks()
    for token in [t for t in ranks if len(t) > 3][::25]:
        text = token.decode("utf-8", errors="ignore")
        if text:
            _assert_all_paths(paths, tk, text)


def _grown_vocabulary(seed: int) -> list[bytes]:
    """The 256 bytes, then up to 400 tokens each made by joining two earlier ones, ranked in the order made."""
    rng = random.Random(seed)
    tokens = [bytes([b]) for b in range(256)]
    pool = [bytes([c]) for c in rng.sample(b"ab-0.", rng.randint(1, 5))]
    seen = set(tokens)
    for _ in range(rng.randint(0, 400)):
        t = rng.choice(pool) + rng.choice(pool)
        if t not in seen and len(t) <= 300:
            seen.add(t)
            tokens.append(t)
            pool.append(t)
    return tokens


@pytest.mark.parametrize("seed", [1020, 1026, 1038, 7, 8])
def test_a_vocabulary_ranked_unlike_a_merge_list_matches_tiktoken(seed):
    # A learned merge list ranks each token after the parts of its last merge, which backtracking and the seam checks
    # rely on. Tokens grown by joining random earlier ones break that (in seed 1020 "aaaaaaaa" ranks before "aaaa"):
    # the encoder must see it and keep long pieces on the merge loop.
    import tiktoken

    tokens = _grown_vocabulary(seed)
    want = tiktoken.Encoding("grown", pat_str=_tiktoken_encoding()._pat_str,
                             mergeable_ranks={t: r for r, t in enumerate(tokens)}, special_tokens={})
    rng = random.Random(seed)
    texts = [c * n for c in "ab0-." for n in (13, 25, 68, 300, 1100)]
    texts += ["".join(rng.choice("ab0-. ") for _ in range(n)) for n in (50, 500, 3000)]
    for settings_ in PATHS.values():
        enc = _bpe.Encoder(tokens, [], *settings_)
        for text in texts:
            assert enc.encode_ordinary(text) == want.encode_ordinary(text), (settings_, text[:30])


def _trained_digit_vocabulary(seed: int, n_merges: int) -> list[bytes]:
    """The 256 bytes, then tokens learned by BPE training (the most frequent pair merged first) on random digits
    whose odds are skewed, so that some tokens run long: a true merge list, like GPT-2's, but of other digit tokens."""
    rng = random.Random(seed)
    weights = [rng.random() ** 3 for _ in range(10)]
    words = [[bytes([c]) for c in "".join(rng.choices("0123456789", weights, k=60)).encode()] for _ in range(40)]
    tokens = [bytes([b]) for b in range(256)]
    for _ in range(n_merges):
        counts: dict[tuple[bytes, bytes], int] = {}
        for w in words:
            for pair in zip(w, w[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        left, right = max(counts, key=counts.__getitem__)
        if left + right not in tokens:  # ("00", "0") and ("0", "00") both make "000": one token, its first rank
            tokens.append(left + right)
        for k, w in enumerate(words):
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == left and w[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            words[k] = merged
    return tokens


@pytest.mark.parametrize("seed", range(6))
def test_long_runs_of_digits_match_tiktoken_in_other_digit_vocabularies(seed):
    # Runs of ASCII digits have a backtracking path of their own, over tables of the digit tokens; any vocabulary
    # that is a merge list must get tiktoken's ids from it, whatever its digit tokens.
    import tiktoken

    tokens = _trained_digit_vocabulary(seed, n_merges=[5, 40, 150, 300, 300, 500][seed])
    want = tiktoken.Encoding("digits", pat_str=_tiktoken_encoding()._pat_str,
                             mergeable_ranks={t: r for r, t in enumerate(tokens)}, special_tokens={})
    rng = random.Random(seed)
    weights = [rng.random() ** 3 for _ in range(10)]
    texts = ["".join(rng.choices("0123456789", weights, k=n)) for n in (64, 65, 300, 2000)]
    texts += [" " + texts[-1], texts[-1] + "x" + texts[-2], "0" * 500]
    for settings_ in [(64, 256, 16), *PATHS.values()]:
        enc = _bpe.Encoder(tokens, [], *settings_)
        for text in texts:
            assert enc.encode_ordinary(text) == want.encode_ordinary(text), (settings_, text[:30])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["0123456789", "0001", "19", "000000009"]).flatmap(
    lambda digits: st.text(st.sampled_from(list(digits)), min_size=60, max_size=2500)))
def test_long_runs_of_digits_match_tiktoken(paths, tk, text):
    _assert_all_paths(paths, tk, text)
    assert _encoder().encode_ordinary(text) == tk.encode_ordinary(text)


def test_encoders_with_different_vocabularies_keep_their_cached_pieces_apart():
    # The piece cache is per thread, and one thread may run several encoders.
    base = [bytes([b]) for b in range(256)]
    first, second = _bpe.Encoder(base + [b"ab"], []), _bpe.Encoder(base + [b"bc"], [])
    for _ in range(2):
        assert first.encode_ordinary("abc") == [256, 99]
        assert second.encode_ordinary("abc") == [97, 256]


def test_long_pieces_that_repeat_match_tiktoken(paths, tk):
    # Pieces of 25 to 4096 bytes that are not tokens are cached per thread: indentation, rules, table borders.
    rng = random.Random(5)
    pieces = [" " * 31, "-" * 40, "+" + "-" * 30 + "+" + "=" * 20, "x" * 100, "".join(rng.choices("ab01", k=300)),
              "0" * 4096, "q" * 4097, "7" * 5000]
    text = "\n".join(rng.choice(pieces) + rng.choice(["", "word", " next"]) for _ in range(300))
    _assert_all_paths(paths, tk, text)


def test_encoders_with_different_vocabularies_keep_their_cached_long_pieces_apart():
    base = [bytes([b]) for b in range(256)]
    first, second = _bpe.Encoder(base + [b"ab"], []), _bpe.Encoder(base + [b"bc"], [])
    text = "abc" * 20
    for _ in range(2):
        assert first.encode_ordinary(text) == [256, 99] * 20
        assert second.encode_ordinary(text) == [97, 256] * 20


def test_a_margin_as_long_as_the_window_is_refused():
    with pytest.raises(ValueError, match="margin must be shorter than the window"):
        _encoder(window=8, margin=8)


def test_core_reports_unicode_version_and_vocabulary():
    assert _bpe.UNICODE_VERSION == "16.0.0"  # the Unicode version of Rust's regex crate, which tiktoken uses
    assert _encoder().n_vocab == 50257


def test_a_vocabulary_without_every_byte_is_refused():
    with pytest.raises(ValueError, match="single-byte token"):
        _bpe.Encoder([b"a", b"b"])


def test_a_vocabulary_with_an_empty_token_is_refused():
    with pytest.raises(ValueError, match="token 256 of the vocabulary is empty"):
        _bpe.Encoder([bytes([b]) for b in range(256)] + [b"", b"ab"])


def test_decode_of_a_bad_id_raises_value_error():
    enc = _encoder()
    assert enc.decode_bytes([15496, 995, 50256]) == b"Hello world<|endoftext|>"
    with pytest.raises(ValueError, match="token id 50257 is out of range"):
        enc.decode_bytes([50257])
    with pytest.raises(ValueError, match="token id -3 is out of range"):
        enc.decode_bytes([-3])


def test_a_batch_encodes_the_texts_it_was_given_while_another_thread_replaces_them(tk):
    """The batch releases the GIL; another thread replacing the list's items frees strs the batch still reads unless
    it holds its own references (a heap use-after-free under `make test-asan`)."""
    import sys
    import threading

    enc = _encoder()
    # Each text made at run time, held by the list alone; enough bytes that several native threads share the work.
    texts = ["".join(f"Line {i} of document {k}: the keeper counted {i * k} ships.\n" for i in range(400))
             for k in range(24)]
    expected = [tk.encode_ordinary(t) for t in texts]
    go, stop = threading.Event(), threading.Event()
    interval = sys.getswitchinterval()

    def replace_items():
        go.wait()
        sys.setswitchinterval(interval)  # running at all means the batch has released the GIL, its texts taken
        n = 0
        while n == 0 or not stop.is_set():
            texts[n % len(texts)] = "".join(["replaced ", str(n)])
            n += 1

    mutator = threading.Thread(target=replace_items)
    mutator.start()
    # The calling thread keeps the GIL from here into the batch, which takes its texts before releasing it.
    sys.setswitchinterval(60.0)
    try:
        go.set()
        got = enc.encode_ordinary_batch(texts, num_threads=4)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        mutator.join()
    assert got == expected
    assert texts[0].startswith("replaced")  # the other thread ran
