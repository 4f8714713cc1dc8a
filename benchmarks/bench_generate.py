"""Tokens/s of greedy generation on random 124M GPT-2 weights: our KV-cached engine, our no-cache loop, and
`transformers`' `generate`, on the same weights, prompt and length, in one run.

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
