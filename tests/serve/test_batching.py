"""Continuous batching: concurrent requests share forward passes and still get the outputs they would get alone.

Batched float32 is not bit-identical to a lone row (the products are blocked differently), so greedy outputs are
compared on a model whose logits are spread wide (`hf_gpt2`'s 0.1 init: no near-ties) and, in the scheduler's own
test, in float64.
"""

from __future__ import annotations

import asyncio
import threading

import torch

from gpt2tui import GPT2, GPT2Config, Tokenizer, generate
from gpt2tui.quant import packing_of
from gpt2tui.serve.engine import Engine
from gpt2tui.serve.sampler import RowParams
from gpt2tui.serve.scheduler import DoneEvent, Scheduler

PROMPTS = [
    "The lighthouse keeper counted the ships every evening.",
    "Seven ships sailed north",
    "His daughter painted the rocks blue so the sailors would remember the harbour, and",
    "Fog",
    "When the fog rolled in, the keeper rang the brass bell twelve times",
    "A",
    "The sailors",
    "Three came back.",
]


def test_sixteen_concurrent_clients_get_their_lone_outputs(server):
    """Sixteen streaming clients at once, with prompts and lengths that differ, so rows join and leave the batch at
    different steps and long prompts prefill over several steps beside decoding rows."""
    client = server.client()
    jobs = [(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), 6 + 3 * i) for i in range(16)]
    lone = [
        client.completions.create(model="m", prompt=p, max_tokens=n, temperature=0).choices[0].text
        for p, n in jobs
    ]
    results: list[str | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        p, n = jobs[i]
        c = server.client()
        start.wait()
        stream = c.completions.create(model="m", prompt=p, max_tokens=n, temperature=0, stream=True)
        results[i] = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == lone


def test_a_seed_holds_inside_a_batch(server):
    client = server.client()
    args = dict(model="m", prompt="Blue rocks", max_tokens=12, temperature=0.9, top_p=0.95, seed=1234)
    alone = client.completions.create(**args).choices[0].text
    out: dict[int, str] = {}
    start = threading.Barrier(6)

    def run(i: int) -> None:
        kwargs = args if i == 0 else {**args, "seed": 99 + i}
        c = server.client()
        start.wait()
        out[i] = c.completions.create(**kwargs).choices[0].text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0] == alone


async def _run(scheduler: Scheduler, tokenizer: Tokenizer, jobs: list[tuple[str, int]]) -> list[str]:
    async def one(prompt: str, n: int) -> str:
        ticket = scheduler.submit([tokenizer.encode(prompt)], [RowParams(max_tokens=n, temperature=0)])
        text = ""
        async for event in ticket.events():
            text += event.text
            if isinstance(event, DoneEvent):
                assert event.finish_reason == "length"
        return text

    return await asyncio.gather(*(one(p, n) for p, n in jobs))


def test_scheduler_rows_join_and_leave_in_float64():
    """More requests than rows, chunked prefill, rows leaving at every step: each output is `generate`'s."""
    torch.manual_seed(0)
    model = (
        GPT2(GPT2Config(n_layers=2, n_heads=2, emb_dim=32, context_length=64, drop_rate=0.0)).double().eval()
    )
    tokenizer = Tokenizer()
    scheduler = Scheduler(model, tokenizer, max_batch=3, max_queue=32, prefill_chunk=5)
    scheduler.start()
    try:
        jobs = [(PROMPTS[i % len(PROMPTS)], 3 + 2 * i) for i in range(10)]
        texts = asyncio.run(_run(scheduler, tokenizer, jobs))
    finally:
        scheduler.stop()
    assert texts == [generate(model, tokenizer, p, max_new_tokens=n, temperature=0) for p, n in jobs]
    assert scheduler.running == 0 and scheduler.queue_depth == 0


def test_the_engine_packs_a_cpu_model_and_greedy_rows_decode_as_generate_does():
    """On the CPU the engine packs float32 weights (`quant.pack_model`); plain greedy steps take the packed head's
    argmax, a step with a row that wants log-probabilities takes the logits: each output is `generate`'s on the
    same packed model."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_layers=2, n_heads=2, emb_dim=32, context_length=64, drop_rate=0.0)).eval()
    tokenizer = Tokenizer()
    engine = Engine(model, tokenizer, max_batch=4, max_queue=32, prefill_chunk=7)
    assert packing_of(engine.model) == "float32"
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + 3 * i) for i in range(6)]

    async def run() -> list[str]:
        async def one(i: int, prompt: str, n: int) -> str:
            params = RowParams(max_tokens=n, temperature=0, logprobs=0 if i == 2 else None)
            ticket = engine.submit([tokenizer.encode(prompt)], [params])
            return "".join([e.text async for e in ticket.events()])

        return await asyncio.gather(*(one(i, p, n) for i, (p, n) in enumerate(jobs)))

    engine.start()
    try:
        texts = asyncio.run(run())
    finally:
        engine.stop()
    assert texts == [generate(engine.model, tokenizer, p, max_new_tokens=n, temperature=0) for p, n in jobs]
