"""The whole model on the Triton path equals the reference path: logits, a training step's gradients, generation."""

import pytest
import torch

pytest.importorskip("triton")

from gpt2tui import GPT2, GPT2Config, SamplingParams  # noqa: E402
from gpt2tui.generate import Decoder  # noqa: E402


def _model(backend: str, device: str, drop_rate: float = 0.0) -> GPT2:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, context_length=96, emb_dim=64, n_heads=4, n_layers=2, drop_rate=drop_rate,
                        attn_backend=backend)
    model = GPT2(config)
    with torch.no_grad():  # wide weights: attention patterns far from uniform, so a wrong mask would show
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return model.to(device)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls into the Triton modules, to prove the model really took the fused path."""
    from gpt2tui.kernels import attention, decode

    calls = {"causal": 0, "decode": 0}
    # The ops (library.py) look the launchers up when they run, so they find these.
    for module, fn, key in ((attention, "_forward", "causal"), (decode, "decode_attention", "decode")):
        real = getattr(module, fn)

        def counted(*args, _real=real, _key=key, **kwargs):
            calls[_key] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, fn, counted)
    return calls


def _batch(device, B=3, T=77, vocab=97):
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (B, T + 1), generator=g)
    return idx[:, :-1].to(device), idx[:, 1:].to(device)


def test_logits_equal_the_reference_path(device, kernel_calls):
    idx, _ = _batch(device)
    with torch.no_grad():
        want = _model("reference", device).eval()(idx)
        assert kernel_calls["causal"] == 0
        got = _model("triton", device).eval()(idx)
    assert kernel_calls["causal"] == 2  # one per layer
    assert (got - want).abs().max() < 1e-4


def test_a_training_step_has_the_reference_gradients(device):
    idx, targets = _batch(device)
    grads = {}
    for backend in ("reference", "triton"):
        model = _model(backend, device).train()
        _, loss = model(idx, targets=targets)
        loss.backward()
        grads[backend] = (loss.item(), {n: p.grad for n, p in model.named_parameters()})
    (ref_loss, ref), (loss, got) = grads["reference"], grads["triton"]
    assert abs(loss - ref_loss) < 1e-5
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=1e-4, atol=1e-6), name


def test_an_attention_layer_copies_no_activations_on_the_triton_path(device, kernel_calls):
    """The kernels read q, k, v where the projection left them and write the output and gradients in that memory
    order, so neither the layer's transpose back to (B, T, C) nor autograd's backward of the head views copies:
    one `cat` (the split's backward) is the only data movement outside the kernels and the matmuls."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    attn = _model("triton", device).transformer.h[0].attn
    x = torch.randn(3, 77, 64, device=device, requires_grad=True)
    with Ops() as ops:
        attn(x).sum().backward()
    assert kernel_calls["causal"] == 1
    copies = [n for n in ops.names if n in ("clone", "contiguous", "_reshape_copy", "cat")]
    assert copies == ["cat"], copies


def test_training_with_dropout_runs_fused_and_repeats_under_a_seed(device):
    """drop_rate=0.1, the seed's training configuration: attention dropout happens inside the kernel."""
    idx, targets = _batch(device, B=2, T=40)
    runs = []
    for _ in range(2):
        model = _model("triton", device, drop_rate=0.1).train()
        torch.manual_seed(123)
        _, loss = model(idx, targets=targets)
        loss.backward()
        runs.append((loss.item(), model.transformer.h[0].attn.c_attn.weight.grad.clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    eval_model = _model("triton", device, drop_rate=0.1).eval()
    with torch.no_grad():
        assert not torch.equal(eval_model(idx), _model("triton", device, drop_rate=0.1).train()(idx))


def test_kv_cached_generation_equals_the_reference_path(device, kernel_calls):
    """Chunked prefill (causal kernel) then decode steps (cache kernel), rows of different lengths, greedy."""
    prompts = [[5, 17, 33], list(range(1, 30)), [7] * 12]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    outs = {}
    for backend in ("reference", "triton"):
        model = _model(backend, device).eval()
        rows = {i: [] for i in range(len(prompts))}
        with torch.no_grad():
            for step in Decoder(model, prompts, params, eos_id=96, n_vocab=97, prefill_chunk=8):
                for row, token in step.items():
                    rows[row].append(token)
        outs[backend] = rows
    assert outs["triton"] == outs["reference"]
    assert kernel_calls["causal"] > 0 and kernel_calls["decode"] > 0


def test_graphed_decode_on_triton_equals_eager(device, kernel_calls, monkeypatch):
    """Decode steps replayed from a graph, on the Triton path: the same tokens as eager steps, and (on the CPU,
    through the op-tracing stand-in) no host value captured. On CUDA it is a real CUDA graph."""
    from gpt2tui import decode_graph
    from gpt2tui_testkit.graphs import ReplayByCalling

    if device == "cpu":
        ReplayByCalling.instances = []
        monkeypatch.setattr(decode_graph, "CUDAGraph", ReplayByCalling)
    prompts = [[5, 17, 33], list(range(1, 30)), [7] * 12]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    model = _model("triton", device).eval()
    outs = {}
    for graphed in (False, True):
        rows = {i: [] for i in range(len(prompts))}
        decoder = Decoder(model, prompts, params, eos_id=96, n_vocab=97)
        decoder.cuda_graph = graphed
        for step in decoder:
            for row, token in step.items():
                rows[row].append(token)
        outs[graphed] = rows
    assert outs[True] == outs[False]
    assert kernel_calls["decode"] > 0
    if device == "cpu":
        assert [g.replays for g in ReplayByCalling.instances] == [6]
