"""The new tokenizer backends give tiktoken's GPT-2 ids, id for id.

Every check runs on the C++ encoder (`backend="cpp"`) and on the pure-Python twin (`backend="python"`) through the
public `Tokenizer`, and compares it with tiktoken built from the package's own vocabulary (no download): on a large
generated corpus (tests/csrc/corpus.py), on pinned ids, on special-token rules, on lone surrogates, on worst-case
inputs, and under hypothesis fuzzing. The Python twin is slow, so it gets a few KB of the corpus and fewer examples.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2tui import Tokenizer
from gpt2tui.tokenizer import _tiktoken_encoding
from gpt2tui_testkit.corpus import ALL_SPACES, EMOJI, build_corpus, pathological, small_corpus

BACKENDS = ["cpp", "python"]
EOT = "<|endoftext|>"
# Hypothesis examples per property: the C++ encoder is fast, the Python twin is not.
EXAMPLES = {"cpp": 400, "python": 50}


@functools.cache
def tokenizer(backend: str) -> Tokenizer:
    return Tokenizer(backend=backend)


@pytest.fixture(scope="module")
def oracle():
    return _tiktoken_encoding()


@pytest.fixture(scope="module", params=BACKENDS)
def tok(request):
    return tokenizer(request.param)


@functools.cache
def _corpus(backend: str) -> tuple[str, ...]:
    return tuple(build_corpus() if backend == "cpp" else small_corpus())


@pytest.fixture(scope="module")
def corpus(tok):
    return list(_corpus(tok.backend))


def _outcome(fn, *args, **kwargs):
    """The ids, or the type of the exception raised: so 'both raise ValueError' also counts as agreeing."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        return type(e)


def assert_same_as_oracle(tok, oracle, text, **kwargs):
    want = _outcome(oracle.encode, text, **kwargs)
    assert _outcome(tok.encode, text, **kwargs) == want, (text, kwargs)
    return want


# -- the corpus ----------------------------------------------------------------------------------------------------------


def test_tokenizer_reports_the_oracles_vocabulary(tok, oracle):
    assert tok.backend in BACKENDS
    assert tok.n_vocab == oracle.n_vocab == 50257
    assert tok.eot_token == oracle.eot_token == 50256


def test_every_corpus_document_equals_tiktoken(tok, oracle, corpus):
    assert len(corpus) > 100
    for doc in corpus:
        want = oracle.encode_ordinary(doc)
        assert tok.encode(doc) == want, doc
        assert tok.encode_ordinary(doc) == want, doc


def test_corpus_joined_equals_tiktoken(tok, oracle, corpus):
    for sep in ("\n\n", "", " "):
        joined = sep.join(corpus)
        assert tok.encode(joined) == oracle.encode_ordinary(joined), repr(sep)


def test_corpus_is_large_and_varied():
    docs = build_corpus()
    assert build_corpus() == docs  # deterministic
    size = sum(len(d.encode("utf-8")) for d in docs)
    assert 200_000 <= size <= 1_000_000 and len(docs) > 1000
    text = "".join(docs)
    for needle in ("\r\n", "\t", "def ", "#include", "fn main", "{\n", '":', "漢", "カ", "한", "ع", "ש", "ह", "ไ",
                   "ж", "Γ", "ქ", "Հ", "ሰ", "த", "ệ", "\u200d", "🏽", "🇯🇵", "\u20e3", "\ufe0f", "\u0301", "’s", "''",
                   "0x", "½", "Ⅻ", "１", "²", "٣", "५", "@", "https://", *ALL_SPACES):
        assert needle in text, repr(needle)
    assert EOT not in text


@pytest.mark.parametrize("num_threads", [1, 2, 4])
def test_encode_batch_equals_encode_and_tiktoken(tok, oracle, corpus, num_threads):
    want = oracle.encode_ordinary_batch(corpus, num_threads=num_threads)
    assert tok.encode_batch(corpus, num_threads=num_threads) == want
    assert tok.encode_ordinary_batch(corpus, num_threads=num_threads) == want
    assert [tok.encode(d) for d in corpus[:50]] == want[:50]
    assert tok.encode_batch([], num_threads=num_threads) == []
    assert tok.encode_batch([""] * 3, num_threads=num_threads) == [[], [], []]


def test_round_trip_of_valid_text(tok, corpus):
    for doc in corpus:
        ids = tok.encode(doc)
        assert tok.decode(ids) == doc
        assert tok.decode(ids, errors="strict") == doc
        assert tok.decode_bytes(ids) == doc.encode("utf-8")


def test_every_id_decodes_to_tiktokens_bytes(tok, oracle):
    ids = list(range(tok.n_vocab))
    assert tok.decode_bytes(ids) == oracle.decode_bytes(ids)
    for i in (0, 1, 220, 198, 50255, 50256):
        assert tok.decode_bytes([i]) == oracle.decode_single_token_bytes(i)


def test_every_token_that_is_valid_text_encodes_like_tiktoken(oracle):
    tok = tokenizer("cpp")
    for i in range(oracle.n_vocab - 1):
        try:
            text = oracle.decode_single_token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tok.encode_ordinary(text) == oracle.encode_ordinary(text), (i, text)


# -- pinned ids --------------------------------------------------------------------------------------------------------

PINNED = {
    "Hello world": [15496, 995],
    " Hello, world!": [18435, 11, 995, 0],
    "I'm here, you'll see": [40, 1101, 994, 11, 345, 1183, 766],
    "They'RE here, it\u2019s fine": [2990, 6, 2200, 994, 11, 340, 447, 247, 82, 3734],
    "\n\n": [628],
    "   hello  ": [220, 220, 23748, 220, 220],
    "  \t\n x": [220, 220, 197, 198, 2124],
    "1,000,000 and 3.14159": [16, 11, 830, 11, 830, 290, 513, 13, 1415, 19707],
    "naïve café": [2616, 38776, 40304],
    "\u00a0\u3000a": [1849, 5099, 222, 64],
    "🤖": [8582, 97, 244],
    "👍🏽": [41840, 235, 8582, 237, 121],
    "漢字": [162, 120, 95, 27764, 245],
    "Привет": [140, 253, 21169, 18849, 38857, 16843, 20375],
    "def f(x):\n    return x": [4299, 277, 7, 87, 2599, 198, 220, 220, 220, 1441, 2124],
    "": [],
}


@pytest.mark.parametrize("text", list(PINNED), ids=repr)
def test_pinned_ids(tok, oracle, text):
    assert tok.encode(text) == PINNED[text]
    assert oracle.encode(text) == PINNED[text]  # the pins themselves are tiktoken's


def test_pinned_special_token_ids(tok):
    assert tok.encode(EOT, allowed_special="all") == [50256]
    assert tok.encode(EOT, disallowed_special=()) == [27, 91, 437, 1659, 5239, 91, 29]
    assert tok.encode_ordinary(EOT) == [27, 91, 437, 1659, 5239, 91, 29]
    assert tok.decode([15496, 995, 50256]) == "Hello world" + EOT


# -- special tokens ----------------------------------------------------------------------------------------------------

SPECIAL_TEXTS = [
    EOT, f"a{EOT}b", f"{EOT}hello", f"hello{EOT}", f"{EOT}{EOT}", EOT * 5, f" {EOT} ", f"word{EOT}word",
    f"\n{EOT}\n", f"  {EOT}  x", f"it's{EOT}'s", f"{EOT} The next document.", f"The end.\n\n{EOT}",
    f"1{EOT}2", f"🤖{EOT}🤖", f"<|{EOT}|>", f"<{EOT}>", f"<|endoftext{EOT}", f"{EOT}|>", f"\u3000{EOT}\u00a0",
]
NOT_SPECIAL = ["<|endoftext|", "<|endoftext", "|endoftext|>", "<|ENDOFTEXT|>", "< |endoftext|>", "<|endoftext |>",
               "<|endoftext|\u200b>", "endoftext", "<||>"]


@pytest.mark.parametrize("text", SPECIAL_TEXTS, ids=repr)
def test_special_token_rules_equal_tiktoken(tok, oracle, text):
    with pytest.raises(ValueError, match="endoftext"):
        tok.encode(text)
    with pytest.raises(ValueError):
        oracle.encode(text)
    for kwargs in (
        dict(allowed_special={EOT}),
        dict(allowed_special="all"),
        dict(allowed_special=frozenset({EOT, "<|not-a-token|>"})),
        dict(allowed_special="all", disallowed_special=()),
        dict(disallowed_special=()),
        dict(allowed_special=set(), disallowed_special=()),
        dict(allowed_special={EOT}, disallowed_special={EOT}),  # explicitly disallowed wins: raises in both
        dict(allowed_special="all", disallowed_special="all"),
    ):
        assert_same_as_oracle(tok, oracle, text, **kwargs)
    allowed = tok.encode(text, allowed_special={EOT})
    assert allowed.count(50256) == text.count(EOT)
    assert 50256 not in tok.encode(text, disallowed_special=())
    assert tok.encode_ordinary(text) == oracle.encode_ordinary(text) == tok.encode(text, disallowed_special=())
    assert tok.decode(allowed) == text
    assert tok.decode(tok.encode_ordinary(text)) == text


@pytest.mark.parametrize("text", NOT_SPECIAL, ids=repr)
def test_near_misses_are_not_special(tok, oracle, text):
    want = oracle.encode(text)
    assert 50256 not in want
    assert tok.encode(text) == tok.encode(text, allowed_special="all") == want


def test_disallowed_special_may_name_any_string(tok, oracle):
    # tiktoken searches the text for whatever `disallowed_special` holds, special token or not.
    for text in ("hello there", "say hello", "goodbye"):
        assert_same_as_oracle(tok, oracle, text, disallowed_special={"hello"})
    with pytest.raises(ValueError):
        tok.encode("hello there", disallowed_special={"hello"})


def test_special_tokens_in_batches(tok, oracle):
    texts = [f"doc {i}{EOT}" if i % 3 == 0 else f"doc {i} plain" for i in range(12)] + [EOT, "", f"{EOT}{EOT}x"]
    for num_threads in (1, 2, 4):
        for kwargs in (dict(allowed_special="all"), dict(allowed_special={EOT}), dict(disallowed_special=())):
            want = oracle.encode_batch(texts, num_threads=num_threads, **kwargs)
            assert tok.encode_batch(texts, num_threads=num_threads, **kwargs) == want
            assert want == [oracle.encode(t, **kwargs) for t in texts]
        with pytest.raises(ValueError):
            tok.encode_batch(texts, num_threads=num_threads)
        with pytest.raises(ValueError):
            oracle.encode_batch(texts, num_threads=num_threads)
        assert tok.encode_ordinary_batch(texts, num_threads=num_threads) == oracle.encode_ordinary_batch(texts)


def test_special_tokens_in_corpus_text(tok, oracle, corpus):
    docs = [d for d in corpus if d][:40]
    text = EOT.join(docs)
    want = oracle.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special="all") == want
    assert want.count(50256) == len(docs) - 1
    assert tok.encode(text, disallowed_special=()) == oracle.encode(text, disallowed_special=())


# -- surrogates --------------------------------------------------------------------------------------------------------

SURROGATE_TEXTS = [
    "a\ud800b", "\udfff", "\ud800", "\udc00", "\ud83d\ude00", "x\ud83d\ude00y", "\ud800\ud800", "\ude00\ud83d",
    "hello \udc80 world", " \ud800 ", "\ud800 hello", "'\ud800s", "it'\ud800s", "\ud800" * 10, "a\ud83d\ude00\ud83db",
    "\ud83d\udc4d\ud83c\udffd", "1\udfff2", "\ud800\n\n", "\n\udbff\udfff\n", "\u00a0\ud800\u3000",
]


@pytest.mark.parametrize("text", SURROGATE_TEXTS, ids=repr)
def test_surrogates_encode_like_tiktoken(tok, oracle, text):
    want = oracle.encode(text)
    assert tok.encode(text) == want
    assert tok.encode_ordinary(text) == oracle.encode_ordinary(text) == want
    assert tok.encode_batch([text, "ok", text], num_threads=2) == [want, oracle.encode("ok"), want]
    # A surrogate pair joins into its character; a lone surrogate becomes U+FFFD (token 4210 on its own).
    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert tok.decode(want) == fixed
    assert want == oracle.encode(fixed)


def test_surrogate_pins(tok):
    assert tok.encode("\ud83d\ude00") == tok.encode("😀") == [47249, 222]
    assert tok.encode("\udfff") == tok.encode("\ufffd") == [4210]
    assert tok.encode("a\ud800b") == [64, 4210, 65]


def test_surrogates_next_to_special_tokens(tok, oracle):
    for text in (f"\ud800{EOT}", f"{EOT}\udfff", f"\ud83d{EOT}\ude00", f"\ud83d\ude00{EOT}\ud83d\ude00"):
        for kwargs in (dict(allowed_special="all"), dict(disallowed_special=()), dict()):
            assert_same_as_oracle(tok, oracle, text, **kwargs)
        assert tok.encode_batch([text], allowed_special="all") == oracle.encode_batch([text], allowed_special="all")


# -- decoding errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[50257], [-1], [1, 2, 50257], [2**31], [2**32 + 15496], [2**63], [-(2**63) - 1],
                                 [10**30], [0, -5, 1]], ids=str)
def test_decode_of_an_out_of_range_id_raises_value_error(tok, ids):
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(ids)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode_bytes(ids)


def test_decode_of_a_partial_character(tok, oracle):
    ids = oracle.encode("🤖")
    for cut in range(1, len(ids)):
        assert tok.decode(ids[:cut]) == oracle.decode(ids[:cut])
        assert tok.decode_bytes(ids[:cut]) == oracle.decode_bytes(ids[:cut])
        with pytest.raises(UnicodeDecodeError):
            tok.decode(ids[:cut], errors="strict")


# -- pathological inputs (the C++ encoder only: the Python twin is quadratic in a piece's length) ----------------------


@pytest.mark.parametrize("name", list(pathological(8)))
def test_pathological_inputs_equal_tiktoken(oracle, name):
    tok = tokenizer("cpp")
    text = pathological(50_000)[name]
    assert abs(len(text.encode("utf-8")) - 50_000) <= 2
    assert tok.encode(text) == oracle.encode_ordinary(text)
    for n in (1, 2, 3, 7, 100, 4097):  # short prefixes cross every merge-path threshold
        assert tok.encode(text[:n]) == oracle.encode_ordinary(text[:n])
    assert tok.encode(" " + text + " ") == oracle.encode_ordinary(" " + text + " ")


@pytest.mark.parametrize("name", list(pathological(8)))
def test_pathological_inputs_short_on_every_backend(tok, oracle, name):
    text = pathological(600)[name]
    assert tok.encode(text) == oracle.encode_ordinary(text)


# -- hypothesis --------------------------------------------------------------------------------------------------------

# Any code point, surrogates (category Cs) included and made common, plus every kind of white space. (Not
# `st.text(st.one_of(...))`: `text` merges the alphabets into one range of code points, in which the 2,048 surrogates
# come up about once in 400 examples; a list of characters keeps `one_of`'s weights.)
SURROGATE_PAIR = st.tuples(st.characters(min_codepoint=0xD800, max_codepoint=0xDBFF),
                           st.characters(min_codepoint=0xDC00, max_codepoint=0xDFFF)).map("".join)
ANY_TEXT = st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"]), SURROGATE_PAIR,
                              st.sampled_from(ALL_SPACES))).map("".join)

# The pre-tokenizer's tricky cases: runs of spaces and newlines before words, contractions, digits beside letters.
TRICKY_CHARS = (list(" \n\t\r\x0b\x0c") + ALL_SPACES + list("aAzZsStTdDmMlLvVrReE") + ["é", "ж", "漢", "ア", "ß", "İ"]
                + list("0123456789") + ["٣", "५", "１", "²", "½", "Ⅻ", "①"] + ["'", "\u2019", "`", '"']
                + list("!?.,;:-_()[]{}<>/\\|@#$%^&*+=~") + ["…", "—", "\u0301", "\u200d", "\ufe0f", "🤖", "🏽"])
TRICKY_CHUNKS = ["'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'rE", "'ve", "'VE", "'ll", "'LL", "'d", "'D", "'m",
                 "'M", "''", "\u2019s", "  ", "   ", "\n\n", "\r\n", " \n", "\n ", " 123", "abc123", "3.14", "1,000",
                 " the", " The", "hello", "don't", "0xFF", "v2.0.1", "\t\t", "    "] + EMOJI[:10]
TRICKY_TEXT = st.lists(st.one_of(st.sampled_from(TRICKY_CHARS), st.sampled_from(TRICKY_CHUNKS)), max_size=50).map(
    "".join)
SPECIAL_TEXT = st.lists(st.sampled_from(TRICKY_CHUNKS + [EOT, "<|", "|>", "endoftext", "<", "|", ">", " ", "\ud800"]),
                        max_size=20).map("".join)
REPLACED_BYTES = st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="replace"))


def _fuzz(backend: str, strategy, check):
    """Run `check(tokenizer, oracle, example)` on hypothesis examples, as many as the backend can afford."""
    tok, oracle = tokenizer(backend), _tiktoken_encoding()

    @settings(max_examples=EXAMPLES[backend], deadline=None)
    @given(strategy)
    def run(example):
        check(tok, oracle, example)

    run()


def _check_text(tok, oracle, text):
    want = oracle.encode_ordinary(text)
    assert tok.encode_ordinary(text) == want
    assert tok.encode(text, disallowed_special=()) == want
    assert_same_as_oracle(tok, oracle, text)
    assert_same_as_oracle(tok, oracle, text, allowed_special="all")
    assert tok.decode(want) == oracle.decode(want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_arbitrary_unicode_with_surrogates(backend):
    _fuzz(backend, ANY_TEXT, _check_text)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_pretokenizer_tricky_text(backend):
    def check(tok, oracle, text):
        _check_text(tok, oracle, text)
        assert tok.decode(tok.encode(text)) == text  # no surrogates in this alphabet: valid text round-trips

    _fuzz(backend, TRICKY_TEXT, check)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_random_bytes_decoded_with_replacement(backend):
    def check(tok, oracle, text):
        _check_text(tok, oracle, text)
        assert tok.decode(tok.encode(text, disallowed_special=())) == text

    _fuzz(backend, REPLACED_BYTES, check)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_special_tokens(backend):
    def check(tok, oracle, text):
        for kwargs in (dict(), dict(allowed_special="all"), dict(disallowed_special=()),
                       dict(allowed_special={EOT}, disallowed_special=())):
            assert_same_as_oracle(tok, oracle, text, **kwargs)

    _fuzz(backend, SPECIAL_TEXT, check)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_encode_batch(backend):
    def check(tok, oracle, texts):
        for kwargs in (dict(disallowed_special=()), dict(allowed_special="all")):
            assert tok.encode_batch(texts, num_threads=2, **kwargs) == oracle.encode_batch(texts, num_threads=2,
                                                                                          **kwargs)

    _fuzz(backend, st.lists(st.one_of(TRICKY_TEXT, SPECIAL_TEXT, ANY_TEXT), max_size=8), check)
