"""Speculative decoding on the 124M shape (CPU, float32 target, greedy, batch 1): plain decoding beside an int8 copy
of the same model as the draft, and beside prompt lookup, with each one's acceptance rate and tokens/s.

Random weights with a wide init (0.1 rather than 0.02): their logits are spread, so an int8 copy agrees with the float
model on most tokens, which is what real trained weights do too (benchmarks/bench_quality.py measures 99.6% top-1
agreement on a trained model). The prompt is a passage followed by its own first sentence, the case prompt lookup is
for (a reply that quotes its input); on random weights the model itself does not copy, so prompt lookup's acceptance
here is what the model happens to repeat. Every path yields the same tokens (asserted): greedy speculation is exact.

    .venv/bin/python -m pytest benchmarks/bench_speculative.py --benchmark-only -s
"""

from __future__ import annotations

import copy

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, SamplingParams, Tokenizer
from gpt2tui.generate import Decoder
from gpt2tui.quant import quantize_model
from gpt2tui.speculative import SpeculativeDecoder

NEW_TOKENS = 64
PASSAGE = ("The tokenizer, the model and the cache all have to agree before a single word comes out. Each layer reads "
           "its weights once for every token, so the speed of a reply is the size of the weights over the bandwidth. ")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2(GPT2Config(drop_rate=0.0)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    return m.conv1d_layout_()


@pytest.fixture(scope="module")
def prompt():
    tok = Tokenizer()
    return tok.encode(PASSAGE * 2 + PASSAGE.split(".")[0])


@pytest.fixture(scope="module")
def reference(model, prompt):
    return _run(model, prompt, None)[0]


def _run(model, prompt, draft):
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0, stop_at_eos=False)
    decoder = Decoder(model, [prompt], params, eos_id=50256)
    engine = decoder if draft is None else SpeculativeDecoder(decoder, draft)
    with torch.inference_mode():
        tokens = [step[0] for step in engine]
    return tokens, getattr(engine, "stats", None)


@pytest.mark.parametrize("drafter", ["none", "int8-self", "prompt-lookup"])
def test_speculative(benchmark, model, prompt, reference, drafter):
    draft = {"none": None, "prompt-lookup": "prompt-lookup"}.get(drafter)
    if drafter == "int8-self":
        draft = quantize_model(copy.deepcopy(model), "int8")
    benchmark.group = "speculative-124m-cpu"
    tokens, stats = benchmark.pedantic(lambda: _run(model, prompt, draft), rounds=3, warmup_rounds=1)
    assert tokens == reference
    benchmark.extra_info["tokens_per_s"] = round(NEW_TOKENS / benchmark.stats.stats.median, 2)
    if stats is not None:
        benchmark.extra_info.update(acceptance=round(stats.acceptance_rate, 3), target_passes=stats.target_passes)
