"""The tokenizer's policy layer on the tiktoken backend: pinned ids, special tokens, decoding, batching."""

import pytest

from gpt2tui import Tokenizer
from gpt2tui.tokenizer import gpt2_ranks


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def test_pinned_ids(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Hello, world!") == [18435, 11, 995, 0]
    assert tok.encode("I'm here, you'll see") == [40, 1101, 994, 11, 345, 1183, 766]
    assert tok.encode("") == []


def test_vocabulary_is_the_packaged_gpt2_ranks(tok):
    ranks = gpt2_ranks()
    assert len(ranks) == 50256 and ranks[b"!"] == 0 and ranks[b" the"] == 262
    assert tok.n_vocab == 50257 and tok.eot_token == 50256 and tok.backend == "cpp"


def test_endoftext_in_text_is_refused_unless_allowed(tok):
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        tok.encode("a<|endoftext|>b")
    assert tok.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [64, 50256, 65]
    assert 50256 not in tok.encode("a<|endoftext|>b", disallowed_special=())
    assert tok.encode_ordinary("<|endoftext|>") == tok.encode("<|endoftext|>", disallowed_special=())


def test_round_trip_and_decode_bytes(tok):
    text = "Ünïcödé, emoji 🤖, CJK 漢字, tabs\tand\n\nnewlines   "
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


def test_decode_errors(tok):
    partial = tok.encode("🤖")[:1]
    assert tok.decode(partial) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(partial, errors="strict")
    with pytest.raises(ValueError, match="token id 50257 is out of range"):
        tok.decode([1, 50257])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        tok.decode_bytes([-1])


def test_encode_batch_equals_encode(tok):
    texts = ["one", "two words", "", "three <|endoftext|> tokens"]
    assert tok.encode_batch(texts[:3], num_threads=2) == [tok.encode(t) for t in texts[:3]]
    with pytest.raises(ValueError):
        tok.encode_batch(texts)
    assert tok.encode_batch(texts, allowed_special="all")[3] == tok.encode(texts[3], allowed_special="all")


def test_stream_decoder_matches_decode(tok):
    text = "Streaming 👩‍👩‍👧 text, naïve"
    d = tok.stream_decoder()
    parts = [d.push([t]) for t in tok.encode(text)] + [d.flush()]
    assert "".join(parts) == text and "\ufffd" not in "".join(parts)


def test_without_the_extension_auto_falls_back_to_tiktoken_with_a_notice(monkeypatch):
    import gpt2tui.tokenizer as module

    monkeypatch.setattr(module, "native_available", lambda: False)
    with pytest.warns(module.TokenizerFallbackWarning, match="not built, using tiktoken"):
        tok = Tokenizer()
    assert tok.backend == "tiktoken" and tok.encode("Hello world") == [15496, 995]
    with pytest.raises(ImportError, match="not built"):
        Tokenizer(backend="cpp")


@pytest.mark.parametrize("backend", ["cpp", "tiktoken", "python"])
def test_every_backend_gives_the_same_ids(backend):
    text = "It's 3.14 o'clock — naïve 🤖\n\n  end "
    assert Tokenizer(backend).encode(text) == Tokenizer("tiktoken").encode(text)


@pytest.mark.parametrize("backend", ["cpp", "tiktoken", "python"])
def test_numpy_ids_are_the_list_ids(backend):
    import numpy as np

    tok = Tokenizer(backend)
    texts = ["It's 3.14 o'clock — naïve 🤖\n\n  end ", "", "lone \ud800 surrogate", "0123456789" * 20, "a b " * 50]
    for text in texts:
        ids = tok.encode_to_numpy(text)
        assert ids.dtype == np.uint32 and ids.tolist() == tok.encode(text)
    special = "one<|endoftext|>two"
    with pytest.raises(ValueError, match="special token"):
        tok.encode_to_numpy(special)
    assert tok.encode_to_numpy(special, allowed_special="all").tolist() == tok.encode(special, allowed_special="all")
    assert tok.encode_to_numpy(special, disallowed_special=()).tolist() == tok.encode_ordinary(special)
    batch = tok.encode_ordinary_batch_to_numpy(texts + [special], num_threads=2)
    assert [a.tolist() for a in batch] == tok.encode_ordinary_batch(texts + [special], num_threads=2)


@pytest.mark.parametrize("backend", ["cpp", "tiktoken", "python"])
def test_decode_takes_any_sequence_of_integers_and_nothing_else(backend):
    import numpy as np
    import torch

    tok = Tokenizer(backend)
    ids = tok.encode("Hello world, again")
    for given in (ids, tuple(ids), iter(ids), np.array(ids), torch.tensor(ids), [np.int64(i) for i in ids]):
        assert tok.decode(given) == "Hello world, again"
    for bad in ([1.5], ["7"], [None]):
        with pytest.raises(TypeError):
            tok.decode(bad)


def test_unknown_backend(tok):
    with pytest.raises(ValueError, match="unknown tokenizer backend 'rust'"):
        Tokenizer(backend="rust")
