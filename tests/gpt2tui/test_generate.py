"""KV-cached generation against the no-cache loop, sampling against Hugging Face's processors, streaming text."""

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, KVCache, SamplingParams, Tokenizer, generate, load_weights, stream
from gpt2tui.generate import (
    Decoder,
    PromptTruncatedWarning,
    TextAssembler,
    generate_ids_nocache,
    process_logits,
)

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2(GPT2Config(context_length=64, emb_dim=64, n_heads=4, n_layers=2)).eval()
    with torch.no_grad():  # a wide init spreads the logits: no near-ties for rounding to flip, varied tokens
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return m


def _cached(model, prompts, params, tok, **kw):
    out = {i: [] for i in range(len(prompts))}
    decoder = Decoder(model, prompts, params, tok.eot_token, tok.n_vocab, **kw)
    for step in decoder:
        for row, t in step.items():
            out[row].append(t)
    return [out[i] for i in range(len(prompts))], decoder


@pytest.mark.parametrize("text", ["Hello", "The quick brown fox jumps over the lazy dog, and then"])
def test_greedy_cached_equals_the_no_cache_loop(model, tok, text):
    ids = tok.encode(text)
    (cached,), _ = _cached(model, [ids], GREEDY, tok)
    assert cached == generate_ids_nocache(model, ids, GREEDY, tok.eot_token)
    assert len(set(cached)) > 3  # a real sequence, not one token repeated


def test_prefill_in_chunks_of_10_4_6_equals_one_full_forward(model):
    ids = torch.randint(0, 50257, (3, 20))
    with torch.no_grad():
        full = model(ids)  # (B, 20, V)
        cache = KVCache.for_model(model, batch_size=3)
        chunks = [model(part, cache) for part in (ids[:, :10], ids[:, 10:14], ids[:, 14:])]
    assert cache.lens == [20, 20, 20]
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)


def test_chunked_prefill_gives_the_same_tokens(model, tok):
    ids = tok.encode("one two three four five six seven eight nine ten eleven twelve")
    whole, _ = _cached(model, [ids], GREEDY, tok)
    for chunk in (1, 4, 10):
        assert _cached(model, [ids], GREEDY, tok, prefill_chunk=chunk)[0] == whole


def test_batch_of_different_lengths_equals_one_at_a_time(model, tok):
    prompts = [tok.encode(t) for t in ["Hi", "A much longer prompt than the first one is", "x y z"]]
    batched, _ = _cached(model, prompts, GREEDY, tok, prefill_chunk=4)
    for p, got in zip(prompts, batched, strict=True):
        assert got == generate_ids_nocache(model, p, GREEDY, tok.eot_token)


def test_batch_rows_that_stop_early_leave_the_others_unchanged(model, tok):
    texts = ["Alpha", "Beta gamma", "Delta"]
    alone = [generate(model, tok, t, max_new_tokens=12, temperature=0) for t in texts]
    stop = alone[1][5:8]  # row 1 stops mid-way on a stop string taken from its own reply
    batch = generate(model, tok, texts, max_new_tokens=12, temperature=0, stop=[stop])
    for a, b in zip(alone, batch, strict=True):
        assert b == a.split(stop)[0]


def test_seeded_sampling_repeats_and_differs_by_seed(model, tok):
    a = generate(model, tok, "Once upon a time", max_new_tokens=16, temperature=1.0, seed=7)
    b = generate(model, tok, "Once upon a time", max_new_tokens=16, temperature=1.0, seed=7)
    c = generate(model, tok, "Once upon a time", max_new_tokens=16, temperature=1.0, seed=8)
    assert a == b and a != c


@pytest.mark.parametrize("params", [dict(top_k=1, temperature=1.0), dict(top_p=1e-6, temperature=1.5)])
def test_top_k_1_and_tiny_top_p_are_greedy(model, tok, params):
    greedy = generate(model, tok, "Greedy?", max_new_tokens=10, temperature=0)
    assert generate(model, tok, "Greedy?", max_new_tokens=10, seed=3, **params) == greedy


def test_logit_processors_match_transformers():
    from transformers.generation import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(3, 500) * 3
    history = torch.randint(0, 500, (3, 12))
    seen = torch.zeros(3, 500, dtype=torch.bool).scatter_(1, history, True)
    params = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3)
    expected = logits.clone()
    for proc in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(50),
                 TopPLogitsWarper(0.9)):
        expected = proc(history, expected)
    ours = process_logits(logits, params, seen)
    assert torch.equal(ours.isinf(), expected.isinf())
    kept = ~ours.isinf()
    assert torch.allclose(ours[kept], expected[kept], atol=1e-5)


def test_repetition_penalty_changes_greedy_output(model, tok):
    plain = generate(model, tok, "la la la la", max_new_tokens=16, temperature=0)
    penalised = generate(model, tok, "la la la la", max_new_tokens=16, temperature=0, repetition_penalty=5.0)
    assert plain != penalised
    ids = tok.encode("la la la la")
    params = SamplingParams(max_new_tokens=16, temperature=0, repetition_penalty=5.0)
    assert _cached(model, [ids], params, tok)[0][0] == generate_ids_nocache(model, ids, params, tok.eot_token)


def test_stream_deltas_concatenate_to_the_text_and_count_tokens(model, tok):
    s = stream(model, tok, "Stream me", max_new_tokens=15, temperature=0)
    deltas = list(s)
    assert "".join(deltas) == s.text == tok.decode(s.token_ids)
    assert len(s.token_ids) == 15 and s.finish_reason == "max_tokens"


def test_stopping_early_computes_no_more_tokens(model, tok):
    calls = []
    handle = model.transformer.ln_f.register_forward_hook(lambda *a: calls.append(1))
    try:
        s = stream(model, tok, "Stop me", max_new_tokens=50, temperature=0)
        for i, _ in enumerate(s):
            if i == 2:
                break
        s_iter_closed_calls = len(calls)
    finally:
        handle.remove()
    assert s.finish_reason == "cancelled"
    assert s_iter_closed_calls <= 4  # prefill + a few decode steps, not 50


def test_eos_ends_generation(tok):
    torch.manual_seed(0)
    m = GPT2(GPT2Config(context_length=32, emb_dim=32, n_heads=4, n_layers=1)).eval()
    with torch.no_grad():  # every position's final hidden state points at <|endoftext|>'s embedding
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.copy_(m.transformer.wte.weight[tok.eot_token] * 100)
    s = stream(m, tok, "Anything", max_new_tokens=10, temperature=0)
    assert list(s) == [] and s.finish_reason == "eos"
    s = stream(m, tok, "Anything", max_new_tokens=10, temperature=0, stop_at_eos=False)
    assert len(list(s)) > 0 and s.token_ids == [tok.eot_token] * 10


def test_max_new_tokens_zero_and_empty_prompt(model, tok):
    assert generate(model, tok, "Hi", max_new_tokens=0) == ""
    s = stream(model, tok, "", max_new_tokens=5, temperature=0)
    list(s)
    assert s.prompt_tokens == 1 and len(s.token_ids) == 5  # an empty prompt starts from <|endoftext|>


def test_prompt_longer_than_the_window_is_cut_from_the_left(model, tok):
    ids = list(range(100, 100 + 150))  # 150 tokens, window 64
    with pytest.warns(PromptTruncatedWarning, match="kept the last 54"):
        s = stream(model, tok, ids, max_new_tokens=10, temperature=0)
    text = "".join(s)
    assert s.prompt_tokens == 54 and len(s.token_ids) == 10 and text
    assert s.token_ids == generate_ids_nocache(model, ids[-54:], SamplingParams(max_new_tokens=10, temperature=0), tok.eot_token)


def test_a_long_request_fills_the_window_then_stops(model, tok):
    with pytest.warns(PromptTruncatedWarning, match="kept the last 32"):
        s = stream(model, tok, list(range(200, 260)), max_new_tokens=100, temperature=0)
    list(s)
    assert s.finish_reason == "context_full" and s.prompt_tokens + len(s.token_ids) == 64 + 1


def test_out_of_range_prompt_ids_are_refused(model, tok):
    with pytest.raises(ValueError, match="out of range"):
        stream(model, tok, [1, 2, 60000])


def test_invalid_sampling_params_say_which():
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams(temperature=-1)


# -- text assembly: UTF-8 and stop strings, on known token sequences ------------------------------------------------


def _assemble(tok, text, stop=()):
    a = TextAssembler(tok, stop)
    deltas = []
    for t in tok.encode(text):
        deltas.append(a.push(t))
        if a.stopped:
            break
    else:
        deltas.append(a.flush())
    return deltas


def test_streaming_never_emits_half_a_utf8_character(tok):
    text = "naïve 🤖 robots 👩‍👩‍👧 and 漢字"
    assert any(len(tok.decode_bytes([t]).decode("utf-8", "ignore")) == 0 for t in tok.encode(text))  # byte-level pieces exist
    deltas = _assemble(tok, text)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_unfinished_character_at_the_end_becomes_replacement(tok):
    a = TextAssembler(tok, ())
    first = tok.encode("🤖")[0]  # the first byte(s) of a four-byte character
    assert a.push(first) == "" and a.flush() == "\ufffd"


@pytest.mark.parametrize("stop", ["END", "D of", "\n\n", "ring"])
def test_stop_strings_cut_the_text_even_across_tokens(tok, stop):
    text = "A string. The END of it.\n\nMore after."
    deltas = _assemble(tok, text, stop=[stop])
    assert "".join(deltas) == text[: text.index(stop)]


def test_text_that_only_looks_like_a_stop_string_is_released(tok):
    deltas = _assemble(tok, "Ending soon; ENTER here", stop=["END"])
    assert "".join(deltas) == "Ending soon; ENTER here"


def test_generation_on_a_loaded_hf_directory_matches_transformers_generate(hf_small_dir, tok):
    import transformers

    model = load_weights(hf_small_dir)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_small_dir).eval()
    ids = tok.encode("The meaning of life is")
    want = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=tok.eot_token)
    want = want[0, len(ids):].tolist()
    if tok.eot_token in want:
        want = want[: want.index(tok.eot_token)]
    (got,), _ = _cached(model, [ids], SamplingParams(max_new_tokens=20, temperature=0), tok)
    assert got == want


def test_cancel_from_another_thread_stops_before_the_next_forward(model, tok):
    """Cancellation is checked after every sampled token, also those whose text is held back."""
    import threading

    calls = {"n": 0}
    real_hidden = model.hidden

    def counting_hidden(*args, **kwargs):
        calls["n"] += 1
        return real_hidden(*args, **kwargs)

    model.hidden = counting_hidden
    try:
        cancel = threading.Event()
        s = stream(model, tok, "Hello", max_new_tokens=40, temperature=0, stop_at_eos=False, cancel=cancel)
        it = iter(s)
        next(it)
        before = calls["n"]
        threading.Thread(target=cancel.set).start()
        while not cancel.is_set():
            pass
        rest = list(it)
        assert s.finish_reason == "cancelled"
        assert calls["n"] == before  # no forward pass after the event was seen
        assert s.text == "".join(rest) or s.text.endswith("".join(rest))
        assert s.first_token_at is not None and 0 < len(s.token_ids) < 40
    finally:
        del model.hidden

    pre = stream(model, tok, "Hello", max_new_tokens=5, temperature=0)
    pre.cancel()
    assert list(pre) == [] and pre.finish_reason == "cancelled" and pre.token_ids == []
