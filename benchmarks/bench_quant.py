"""One weight-only product, the 124M model's shapes, on the CPU: our packed int8, bfloat16 and float32 kernels
(`gpt2tui._quant`; float32 is the layout alone, as the server packs a float model) beside float32 `F.linear` (the
model's own layout), torch's `_weight_int8pack_mm` and torchao's int8 weight-only
linear, for one row (a decode step) and 16 rows (a batch), in one run. And a greedy step's head: the packed
argmax, which never writes the logits, beside `F.linear` and torch's argmax, at the 124M and the tiny model's width. torchao is a baseline to beat, not a
dependency: its cases skip where it is not installed. It is not among the dev dependencies because once installed,
transformers imports it (and Triton with it) on every model import, which puts Triton's interpreter switch out of the
kernel tests' reach; install it into the venv for a measuring run and uninstall it afterwards.

    .venv/bin/pip install torchao==0.18.0   # the version RESULTS.md records
    .venv/bin/python -m pytest benchmarks/bench_quant.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2tui import quant

SHAPES = {"c_attn": (2304, 768), "c_fc": (3072, 768), "mlp.c_proj": (768, 3072), "head": (50257, 768)}
PATHS = ["float32", "gpt2tui-int8", "gpt2tui-bf16", "gpt2tui-f32", "torch-int8pack", "torchao-int8"]
KIND = {"gpt2tui-int8": "int8", "gpt2tui-bf16": "bfloat16", "gpt2tui-f32": quant.FLOAT}


def _path(name: str, w: torch.Tensor, b: torch.Tensor | None):
    """A callable x → x · wᵀ + b for one implementation, built once outside the timing."""
    if name == "float32":
        wt = w.t().contiguous().t()  # the model's (in, out) memory layout (GPT2.conv1d_layout_)
        return lambda x: F.linear(x, wt, b)
    if name.startswith("gpt2tui"):
        values, scale = quant.quantize_weight(w, KIND[name])
        return quant.QuantLinear.from_values(values, scale, b)
    if name == "torch-int8pack":
        values, scale = quant.quantize_weight(w, "int8")
        return lambda x: torch._weight_int8pack_mm(x, values, scale) + (0 if b is None else b)
    torchao = pytest.importorskip("torchao.quantization")
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        linear.weight.copy_(w)
        if b is not None:
            linear.bias.copy_(b)
    model = torch.nn.Sequential(linear).eval()
    torchao.quantize_(model, torchao.Int8WeightOnlyConfig())
    return model


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("path", PATHS)
def test_linear(benchmark, path, shape, rows):
    torch.manual_seed(0)
    N, K = SHAPES[shape]
    w = torch.randn(N, K) * 0.02
    b = None if shape == "head" else torch.randn(N) * 0.02
    f = _path(path, w, b)
    x = torch.randn(rows, K)
    with torch.inference_mode():
        out = f(x)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        assert (
            (out.double() - exact).norm() / exact.norm()
        ).item() < 0.02  # every path computes the same product
        benchmark.group = f"linear-{shape}-{rows}rows"
        benchmark.pedantic(f, args=(x,), rounds=30 if shape != "head" else 10, warmup_rounds=3)
    weight_bytes = N * K * (4 if path.endswith("32") else 2 if path.endswith("bf16") else 1)
    benchmark.extra_info["weight_gb_s"] = round(weight_bytes / benchmark.stats.stats.median / 1e9, 1)


@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize("width", [768, 64])
@pytest.mark.parametrize("path", ["float32-argmax", "gpt2tui-f32-argmax"])
def test_greedy_head(benchmark, path, width, rows):
    """The next tokens of `rows` greedy rows from the 50257-row head."""
    torch.manual_seed(0)
    w = torch.randn(50257, width) * 0.02
    h = torch.randn(rows, width)
    if path == "float32-argmax":
        f = lambda h: F.linear(h, w).argmax(-1)  # noqa: E731
    else:
        values, scale = quant.quantize_weight(w, quant.FLOAT)
        f = quant.QuantEmbedding.from_values(values, scale).argmax
    with torch.inference_mode():
        assert torch.equal(f(h), F.linear(h.double(), w.double()).argmax(-1))
        benchmark.group = f"greedy-head-{width}-{rows}rows"
        benchmark.pedantic(f, args=(h,), rounds=30, warmup_rounds=3)
