"""Tokens/s of greedy generation on random 124M GPT-2 weights: our KV-cached engine, our no-cache loop, and
`transformers`' `generate`, on the same weights, prompt and length, in one run; and the chat app's path
(`ChatSession.reply`: time to first token and tokens/s) beside the raw `Stream` it wraps.

    make bench            # or: .venv/bin/python -m pytest benchmarks/bench_generate.py --benchmark-only
"""

import pytest
import torch

from gpt2tui import SamplingParams, Tokenizer, load_weights
from gpt2tui.generate import Decoder, generate_ids_nocache

PROMPT_TOKENS = 32
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # the 124M shape, random weights
    path = tmp_path_factory.mktemp("gpt2-124m-random")
    hf.save_pretrained(path)
    return hf, load_weights(path)


@pytest.fixture(scope="module")
def prompt():
    tok = Tokenizer()
    text = "The tokenizer, the model and the cache all have to agree before a single word comes out. " * 4
    return tok.encode(text)[:PROMPT_TOKENS]


def _report(benchmark, n_tokens):
    benchmark.extra_info["new_tokens"] = n_tokens
    benchmark.extra_info["tokens_per_s"] = round(n_tokens / benchmark.stats.stats.median, 2)


PARAMS = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0, stop_at_eos=False)


@pytest.mark.benchmark(group="generate-124m-cpu")
def test_gpt2tui_kv_cache(benchmark, models, prompt):
    _, model = models

    def run():
        return [step[0] for step in Decoder(model, [prompt], PARAMS, eos_id=50256)]

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert len(out) == NEW_TOKENS
    _report(benchmark, NEW_TOKENS)


@pytest.mark.benchmark(group="generate-124m-cpu")
def test_gpt2tui_no_cache_loop(benchmark, models, prompt):
    _, model = models
    out = benchmark.pedantic(lambda: generate_ids_nocache(model, prompt, PARAMS, 50256), rounds=3, warmup_rounds=1)
    assert len(out) == NEW_TOKENS
    _report(benchmark, NEW_TOKENS)


@pytest.mark.benchmark(group="generate-124m-cpu")
def test_transformers_generate(benchmark, models, prompt):
    hf, _ = models
    ids = torch.tensor([prompt])

    def run():
        with torch.inference_mode():
            return hf.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                               pad_token_id=50256)

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert out.shape[1] == PROMPT_TOKENS + NEW_TOKENS
    _report(benchmark, NEW_TOKENS)


def test_all_three_agree(models, prompt):
    """The figures compare like with like: the same 64 tokens come out of each path."""
    hf, model = models
    ours = [step[0] for step in Decoder(model, [prompt], PARAMS, eos_id=50256)]
    with torch.inference_mode():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=50256)[0, PROMPT_TOKENS:].tolist()
    assert ours == theirs


# -- on CUDA: each decode step launched from Python, or replayed from a CUDA graph ---------------------------------
# At batch 1 a 124M decode step is ~120 small kernels; launched one by one from Python the GPU mostly waits for the
# host. `Decoder(cuda_graph=True)` captures the step once and replays it (gpt2tui/decode_graph.py). Same weights,
# prompt and tokens both ways, in bfloat16, for each attention backend the model can dispatch to on CUDA.

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cuda_model():
    from gpt2tui import GPT2, GPT2Config

    torch.manual_seed(0)  # random 124M weights of our own: the GPU machine has no `transformers` to write them
    return GPT2(GPT2Config.from_preset("gpt2")).to("cuda", torch.bfloat16).eval()


def _decode_cuda(model, prompt, graphed):
    out = [step[0] for step in Decoder(model, [prompt], PARAMS, eos_id=50256, cuda_graph=graphed)]
    torch.cuda.synchronize()
    return out


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "cuda-graph"])
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_decode_cuda(benchmark, monkeypatch, cuda_model, prompt, backend, graphed):
    benchmark.group = f"generate-124m-cuda-bf16-{backend}"
    monkeypatch.setenv("GPT2TUI_ATTENTION", backend)  # the dispatch rule's override
    out = benchmark.pedantic(lambda: _decode_cuda(cuda_model, prompt, graphed), rounds=5, warmup_rounds=1)
    assert len(out) == NEW_TOKENS
    _report(benchmark, NEW_TOKENS)
    benchmark.extra_info["device"] = torch.cuda.get_device_name()


# -- the chat app's path: ChatSession against the raw Stream ------------------------------------------------------
# The app streams through `ChatSession.reply` (prompt rendering with the chat template, the context policy, a
# ReplyStream wrapping the Stream). These pairs measure the same model, the same prompt ids and the same sampling
# parameters both ways, so any cost the session adds shows as a gap between neighbours.

CHAT_MESSAGE = "The tokenizer, the model and the cache all have to agree before a single word comes out."
CHAT_NEW_TOKENS = 32  # half the figures above: the pairs below run in well under a minute
CHAT_SETTINGS = dict(temperature=0.0, top_k=None, top_p=None, repetition_penalty=1.0, max_new_tokens=CHAT_NEW_TOKENS)


@pytest.fixture(scope="module")
def chat(models):
    from gpt2tui.session import ChatSession, ChatSettings

    _, model = models
    session = ChatSession(model, Tokenizer(), settings=ChatSettings(**CHAT_SETTINGS), model_name="gpt2-124m-random")
    reply = session.reply(CHAT_MESSAGE)  # the prompt the session builds, reused verbatim by the raw Stream
    prompt_ids, params = reply.prompt.ids, session.settings.sampling(session.template.stop)
    reply.close()
    return session, prompt_ids, params


def _session_reply(session, first_only: bool) -> tuple[str, int]:
    session.clear()
    reply = session.reply(CHAT_MESSAGE)
    text = ""
    for delta in reply:
        text += delta
        if first_only:
            reply.cancel()  # the app's Esc: no further token is computed
    return text, reply.stats.new_tokens


def _stream_reply(model, prompt_ids, params, first_only: bool) -> tuple[str, int]:
    from gpt2tui.generate import Stream

    stream = Stream(model, Tokenizer(), prompt_ids, params)
    text = ""
    for delta in stream:
        text += delta
        if first_only and text.strip():  # the session's first delta is its first non-blank text
            stream.cancel()
    return text, len(stream.token_ids)


def _report_ttft(benchmark):
    benchmark.extra_info["time_to_first_token_ms"] = round(benchmark.stats.stats.median * 1000, 1)


@pytest.mark.benchmark(group="chat-first-token-124m-cpu")
def test_first_token_raw_stream(benchmark, models, chat):
    _, prompt_ids, params = chat
    text, _ = benchmark.pedantic(lambda: _stream_reply(models[1], prompt_ids, params, True), rounds=5, warmup_rounds=1)
    assert text.strip()
    _report_ttft(benchmark)


@pytest.mark.benchmark(group="chat-first-token-124m-cpu")
def test_first_token_chat_session(benchmark, chat):
    session = chat[0]
    text, _ = benchmark.pedantic(lambda: _session_reply(session, True), rounds=5, warmup_rounds=1)
    assert text.strip() and session.last_stats.finish_reason == "cancelled"
    _report_ttft(benchmark)


@pytest.mark.benchmark(group="chat-reply-124m-cpu")
def test_reply_raw_stream(benchmark, models, chat):
    _, prompt_ids, params = chat
    _, n = benchmark.pedantic(lambda: _stream_reply(models[1], prompt_ids, params, False), rounds=3, warmup_rounds=1)
    _report(benchmark, n)


@pytest.mark.benchmark(group="chat-reply-124m-cpu")
def test_reply_chat_session(benchmark, chat):
    session = chat[0]
    _, n = benchmark.pedantic(lambda: _session_reply(session, False), rounds=3, warmup_rounds=1)
    stats = session.last_stats
    _report(benchmark, n)
    benchmark.extra_info["session_tokens_per_s"] = round(stats.tokens_per_s or 0.0, 2)
    benchmark.extra_info["session_time_to_first_token_ms"] = round((stats.time_to_first_token or 0.0) * 1000, 1)


def test_session_and_stream_agree(models, chat):
    """Like with like: the session's reply is the raw stream's text, stripped as the session stores it."""
    session, prompt_ids, params = chat
    text, n = _session_reply(session, False)
    raw_text, raw_n = _stream_reply(models[1], prompt_ids, params, False)
    assert (text, n) == (raw_text.strip(), raw_n)
