"""The attention under torch.compile: the Triton kernels are custom ops (`kernels/library.py`), so a training step
and a KV-cached decode step compile as one graph with `attn_backend="triton"`, and give the eager results. On the CPU
the kernels run in Triton's interpreter (conftest.py) and the graphs compile with the `aot_eager` backend; one slow
test compiles a training step with inductor, the default backend."""

from __future__ import annotations

import pytest
import torch

from gpt2tui import GPT2, GPT2Config
from gpt2tui.cache import KVCache


def _model(device, drop_rate=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=97, context_length=32, emb_dim=32, n_heads=2, n_layers=2, drop_rate=drop_rate,
                     attn_backend="triton")
    return GPT2(cfg).to(device)


def test_the_ops_are_registered():
    for name in ("flash_attention", "flash_attention_backward", "decode_attention"):
        assert hasattr(torch.ops.gpt2tui, name)


def test_fake_implementations_match_the_kernels(device):
    """opcheck runs each op for real and through its fake implementation (shapes, dtypes, strides), its schema, and the
    forward's registered autograd."""
    g = torch.Generator().manual_seed(0)
    # q, k, v viewed out of one (B, T, 3, H, D) projection, as the model makes them: outputs keep that memory order
    qkv = torch.randn(2, 9, 3, 2, 16, generator=g).to(device).requires_grad_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D), heads inside tokens
    seed = torch.zeros((), dtype=torch.int64)
    torch.library.opcheck(torch.ops.gpt2tui.flash_attention, (q, k, v, 0.0, 0.25, seed))
    cache = torch.randn(2, 2, 16, 16, generator=g).to(device)
    lens = torch.tensor([9, 12], device=device)
    torch.library.opcheck(torch.ops.gpt2tui.decode_attention, (q[:, :, :1].detach(), cache, cache, lens, 0.25, 12))


@pytest.mark.parametrize("drop_rate", [0.0, 0.1])
def test_a_training_step_compiles_without_graph_breaks(device, drop_rate):
    model = _model(device, drop_rate)
    ids = torch.randint(0, 97, (2, 12), device=device)

    def loss_of(ids, targets):
        return model(ids, targets=targets)[1]

    explained = torch._dynamo.explain(loss_of)(ids, ids)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(loss_of, fullgraph=True, backend="aot_eager")
    compiled(ids, ids).backward()  # dropout's seed is drawn inside the graph: it runs, and differentiates
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_compiled_and_eager_training_agree_over_20_steps(device):
    """float32, no dropout: the same losses within 1e-5 relative, step after step."""
    eager, compiled_model = _model(device), _model(device)
    data = torch.randint(0, 97, (20, 2, 9), generator=torch.Generator().manual_seed(1)).to(device)

    def step_fn(model):
        def loss_of(ids):
            return model(ids[:, :-1], targets=ids[:, 1:])[1]

        return loss_of

    compiled_loss = torch.compile(step_fn(compiled_model), fullgraph=True, backend="aot_eager")
    eager_loss = step_fn(eager)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (eager, compiled_model)]
    for ids in data:
        losses = []
        for loss_of, opt in ((eager_loss, opts[0]), (compiled_loss, opts[1])):
            opt.zero_grad()
            loss = loss_of(ids)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_a_decode_step_compiles_without_graph_breaks(device):
    model = _model(device).eval()
    ids = torch.randint(0, 97, (2, 12), device=device)
    nxt = torch.tensor([[5], [7]], device=device)

    def step(next_ids, cache):
        return model.head(model.hidden(next_ids, cache)[:, -1])  # (B, V)

    with torch.no_grad():
        eager_cache, compiled_cache = KVCache.for_model(model, 2, 32), KVCache.for_model(model, 2, 32)
        model.hidden(ids, eager_cache)
        model.hidden(ids, compiled_cache)
        explained = torch._dynamo.explain(step)(nxt, KVCache.for_model(model, 2, 32))
        assert explained.graph_break_count == 0, explained.break_reasons
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(nxt, compiled_cache), step(nxt, eager_cache), atol=1e-5)


@pytest.mark.slow  # inductor generates and builds C++ for the forward and the backward: ~a minute on two cores
def test_inductor_compiles_a_training_step_around_the_ops(device):
    """The default backend, as `--compile` uses it: the ops stay extern calls, inductor fuses what lies between, and
    the loss and gradients are the eager ones."""
    torch._dynamo.reset()
    eager, compiled_model = _model(device), _model(device)
    ids = torch.randint(0, 97, (2, 12), device=device)
    compiled = torch.compile(compiled_model, fullgraph=True)
    losses = []
    for model in (eager, compiled):
        loss = model(ids, targets=ids, return_logits=False)[1]
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for a, b in zip(eager.parameters(), compiled_model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
