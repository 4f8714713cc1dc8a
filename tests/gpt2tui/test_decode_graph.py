"""Decode steps replayed from a CUDA graph give the eager engine's tokens, and capture nothing that changes per token.

On the CPU a stand-in graph (`graphs.ReplayByCalling`) replays by calling the captured step again, and checks each
replay's op trace against the first. The CUDA tests at the end capture real graphs.
"""

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, KVCache, SamplingParams, Tokenizer, decode_graph
from gpt2tui.decode_graph import GraphedDecodeStep, graphs_requested
from gpt2tui.errors import ConfigError
from gpt2tui.generate import Decoder
from gpt2tui_testkit.graphs import ReplayByCalling


@pytest.fixture
def stand_in(monkeypatch):
    ReplayByCalling.instances = []
    monkeypatch.setattr(decode_graph, "CUDAGraph", ReplayByCalling)
    return ReplayByCalling


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def _model(backend, seed=0):
    torch.manual_seed(seed)
    m = GPT2(GPT2Config(context_length=48, emb_dim=64, n_heads=4, n_layers=2, attn_backend=backend)).eval()
    with torch.no_grad():  # a wide init: varied tokens, no near-ties
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return m


def _run(model, prompts, params, graphed, finish_after=None, eos=50256):
    out = {i: [] for i in range(len(prompts))}
    decoder = Decoder(model, prompts, params, eos, 50257)
    decoder.cuda_graph = graphed  # on the CPU, only with the stand-in
    for step in decoder:
        for row, t in step.items():
            out[row].append(t)
            if finish_after and len(out[row]) == finish_after.get(row):
                decoder.finish(row)
    return [out[i] for i in range(len(prompts))], decoder


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_graphed_steps_give_the_eager_tokens(stand_in, tok, backend):
    model = _model(backend)
    prompts = [tok.encode(t) for t in ["Hi", "A much longer prompt than the first one", "x y z"]]
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_at_eos=False)
    eager, _ = _run(model, prompts, params, graphed=False)
    finish = {1: 4, 2: 9}  # rows leave the batch mid-way: the cache shrinks and a new graph is captured
    graphed, _ = _run(model, prompts, params, graphed=True, finish_after=finish)
    for row, (e, g) in enumerate(zip(eager, graphed, strict=True)):
        assert g == e[: finish.get(row, len(e))]
    assert len(set(eager[0])) > 3
    # One graph per batch: 3 rows make tokens 2-4 (a warm-up, 2 replays), 2 rows tokens 5-9, 1 row tokens 10-20.
    assert [g.replays for g in stand_in.instances] == [2, 4, 10]


def test_seeded_sampling_and_repetition_penalty_match(stand_in, tok):
    model = _model("sdpa", seed=1)
    prompts = [tok.encode("Once upon a time"), tok.encode("la la la la")]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=40, repetition_penalty=1.3, seed=5,
                            stop_at_eos=False)
    assert _run(model, prompts, params, graphed=True)[0] == _run(model, prompts, params, graphed=False)[0]


def test_the_window_filling_up_ends_rows_before_the_graph_overruns(stand_in, tok):
    model = _model("sdpa")
    prompts = [list(range(100, 140)), [7, 8]]  # row 0 has 8 positions left in the 48-token window
    params = SamplingParams(max_new_tokens=30, temperature=0, stop_at_eos=False)
    eager, e = _run(model, prompts, params, graphed=False)
    graphed, g = _run(model, prompts, params, graphed=True)
    assert graphed == eager and g.finish_reason == e.finish_reason == ["context_full", "max_tokens"]


def test_a_full_cache_is_refused_not_overrun(stand_in):
    model = _model("sdpa")
    cache = KVCache.for_model(model, batch_size=1, max_len=4)
    with torch.inference_mode():
        model.hidden(torch.tensor([[1, 2, 3, 4]]), cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        GraphedDecodeStep(model, cache)(torch.tensor([5]))


def test_a_refused_capture_falls_back_to_eager_steps_with_one_warning(stand_in, tok, monkeypatch):
    captures = []

    def refuse(self, fn):
        captures.append(self)
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(stand_in, "capture", refuse)
    monkeypatch.setattr(decode_graph, "_REFUSED", set())
    model = _model("sdpa")
    prompts = [tok.encode(t) for t in ["Hi", "x y z", "A third prompt"]]
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_at_eos=False)
    finish = {1: 4}  # a row leaves: the smaller batch gets a new step, which must not try again
    eager, _ = _run(model, prompts, params, graphed=False)
    with pytest.warns(RuntimeWarning, match="decoding without a CUDA graph: the capture failed") as caught:
        graphed, _ = _run(model, prompts, params, graphed=True, finish_after=finish)
        again, _ = _run(model, prompts, params, graphed=True)  # a later reply on the same device
    for row, (e, g) in enumerate(zip(eager, graphed, strict=True)):
        assert g == e[: finish.get(row, len(e))]
    assert again == eager
    assert len(caught) == 1 and len(captures) == 1
    assert all(g.replays == 0 for g in stand_in.instances)


def test_a_capture_that_fails_as_it_ends_puts_the_threads_stream_back(monkeypatch):
    # torch.cuda.graph restores the stream only after its capture ended cleanly; the eager steps after a refused
    # capture must not stay on the side stream.
    streams = ["default"]

    class Graph:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            streams.append("side")

        def __exit__(self, *exc):
            raise RuntimeError("operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "graph", Graph)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams[-1])
    monkeypatch.setattr(torch.cuda, "set_stream", streams.append)
    graph = object.__new__(decode_graph.CUDAGraph)  # no CUDA here to make its stream and graph
    graph.device, graph.stream, graph.graph = torch.device("cuda", 0), "side", None
    with pytest.raises(RuntimeError, match="during capture"):
        graph.capture(lambda: None)
    assert streams[-1] == "default"


def test_the_switch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv(decode_graph.ENV_VAR, raising=False)
    assert graphs_requested(cuda) is True  # on by default
    assert graphs_requested(cpu) is False  # ... where there are graphs
    monkeypatch.setenv(decode_graph.ENV_VAR, "0")
    assert graphs_requested(cuda) is False and graphs_requested(cuda, True) is True
    monkeypatch.setenv(decode_graph.ENV_VAR, "1")
    assert graphs_requested(cuda) is True and graphs_requested(cuda, False) is False
    assert graphs_requested(cpu) is False  # a machine-wide setting does not break CPU runs
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        graphs_requested(cpu, True)
    monkeypatch.setenv(decode_graph.ENV_VAR, "yes")
    with pytest.raises(ConfigError, match=r"\$GPT2TUI_CUDA_GRAPH is 'yes'; set it to 1"):
        graphs_requested(cuda)


def _forced_logits(model, prompts, forced, graphed):
    """Logits `(steps, B, V)` of decode steps fed the tokens `forced` `(steps, B)` after a prefill of `prompts`,
    each step eager (`model.hidden` on the cache) or through a `GraphedDecodeStep`."""
    device = model.device
    lens = [len(p) for p in prompts]
    cache = KVCache.for_model(model, len(prompts), max_len=max(lens) + len(forced) + 3)
    with torch.inference_mode():
        ids = torch.tensor([p + [0] * (max(lens) - len(p)) for p in prompts], device=device)  # (B, T)
        model.hidden(ids, cache)
        cache.set_lengths(lens)
        step = GraphedDecodeStep(model, cache) if graphed else (
            lambda t: model.head(model.hidden(t[:, None], cache)[:, -1]))
        return torch.stack([step(torch.tensor(t, device=device)).clone() for t in forced])


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_graphed_logits_follow_the_eager_ones_step_by_step(stand_in, backend):
    model = _model(backend)
    prompts, forced = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], [[11, 12], [13, 14], [15, 16], [17, 18]]
    eager, graphed = (_forced_logits(model, prompts, forced, g) for g in (False, True))
    torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=1e-4)


# -- CUDA only -----------------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_graph_logits_follow_the_eager_ones(backend, dtype):
    """A real capture: every replayed step's logits are the eager step's, to the rounding of the dtype (the graph
    reads the whole cache, so attention may sum in another order than the eager step)."""
    if backend == "triton":
        pytest.importorskip("triton")
    model = _model(backend).to("cuda", dtype)
    prompts = [list(range(1, 20)), [7, 8, 9]]
    forced = [[t, t + 100] for t in range(30, 42)]
    eager, graphed = (_forced_logits(model, prompts, forced, g).float() for g in (False, True))
    scale = eager.abs().max().item()
    tolerance = (1e-4 if dtype == torch.float32 else 3e-2) * scale
    assert (graphed - eager).abs().max().item() <= tolerance


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_cuda_graph_decoder_gives_the_eager_tokens(tok, backend):
    """Whole generations in float32, with rows leaving the batch (each new batch captures a new graph)."""
    if backend == "triton":
        pytest.importorskip("triton")
    model = _model(backend).to("cuda")
    prompts = [tok.encode(t) for t in ["Hi", "A much longer prompt than the first one", "x y z"]]
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_at_eos=False)
    finish = {1: 4, 2: 9}
    eager, _ = _run(model, prompts, params, graphed=False, finish_after=finish)
    graphed, _ = _run(model, prompts, params, graphed=True, finish_after=finish)
    assert graphed == eager
