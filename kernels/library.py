"""The Triton attention as PyTorch custom ops: `torch.ops.gpt2tui.flash_attention` (forward, with its autograd),
`flash_attention_backward` and `decode_attention`, and the documented functions over them.

Why ops: `torch.compile` cannot trace into a Triton launcher, nor into an autograd.Function that calls one. As custom
ops with fake implementations (what comes out: shapes, dtypes, strides), the compiler keeps each attention call as one
node and AOTAutograd differentiates through the registered backward, so a compiled training step or decode step is one
graph. Eager calls take the same ops: one path to test, and what host time the dispatcher costs, a compiled step or a
CUDA graph does not pay.

The dropout seed is a tensor (drawn inside a compiled graph from torch's generator), not a Python int that would be a
new constant, and a recompile, at every step. The implementations import the Triton modules when first run, so
registering the ops never imports Triton (nor waits for it): the model imports this module on every load.
"""

from __future__ import annotations

import math

import torch

from .common import _check_attention, _layout_of, _new_tensor, _on_device, _stats_layout, _unit_last

_FLASH = "(Tensor q, Tensor k, Tensor v, float dropout_p, float scale, Tensor seed) -> (Tensor, Tensor)"
_FLASH_BACKWARD = ("(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor stats, float dropout_p, float scale, "
                   "Tensor seed) -> (Tensor, Tensor, Tensor)")
_DECODE = "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_lens, float scale, int? max_len) -> Tensor"


def _like_q(q: torch.Tensor) -> torch.Tensor:
    """An empty `(B, H, T, D)` tensor laid out as the kernels lay out their outputs: in q's memory order."""
    return _new_tensor(*_layout_of(_unit_last(q)))


def _flash(q, k, v, dropout_p, scale, seed):
    from .attention import _forward  # deferred: imports Triton

    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    with _on_device(q):
        o, stats = _forward(q, k, v, scale, dropout_p, int(seed))
    # Past the log-sum-exp the buffer is the backward's room for Δ, never written yet: zeros, so that the op's every
    # output is a function of its inputs, as the compiler assumes.
    stats[q.shape[0] * q.shape[1] * q.shape[2] :].zero_()
    return o, stats


def _flash_backward(do, q, k, v, o, stats, dropout_p, scale, seed):
    from .attention import _backward  # deferred: imports Triton

    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    # The kernels write Δ into the statistics buffer's second half. A copy keeps the op free of mutations (a saved
    # forward output mutated in the backward is what AOTAutograd cannot express); it is 2·B·H·T floats, small beside
    # the attention itself.
    with _on_device(q):
        return _backward(_unit_last(do), q, k, v, o, stats.clone(), scale, dropout_p, int(seed))


def _decode(q, k_cache, v_cache, cache_lens, scale, max_len):
    from .decode import decode_attention  # deferred: imports Triton

    return decode_attention(q, k_cache, v_cache, cache_lens, scale=scale, max_len=max_len)


flash_attention = torch.library.custom_op("gpt2tui::flash_attention", _flash, mutates_args=(), schema=_FLASH)
flash_attention_backward = torch.library.custom_op(
    "gpt2tui::flash_attention_backward", _flash_backward, mutates_args=(), schema=_FLASH_BACKWARD
)
decode_attention_op = torch.library.custom_op("gpt2tui::decode_attention", _decode, mutates_args=(), schema=_DECODE)


@flash_attention.register_fake
def _(q, k, v, dropout_p, scale, seed):
    B, H, T, _ = q.shape
    return _like_q(q), _new_tensor(*_stats_layout(B, H, T, q.device))


@flash_attention_backward.register_fake
def _(do, q, k, v, o, stats, dropout_p, scale, seed):
    return _like_q(q), _like_q(q), _like_q(q)


@decode_attention_op.register_fake
def _(q, k_cache, v_cache, cache_lens, scale, max_len):
    return _like_q(q)


def _setup(ctx, inputs, output):
    q, k, v, dropout_p, scale, seed = inputs
    o, stats = output
    ctx.save_for_backward(q, k, v, o, stats, seed)
    ctx.dropout_p, ctx.scale = dropout_p, scale


def _backward(ctx, do, _dstats):
    q, k, v, o, stats, seed = ctx.saved_tensors
    dq, dk, dv = torch.ops.gpt2tui.flash_attention_backward(do, q, k, v, o, stats, ctx.dropout_p, ctx.scale, seed)
    return dq, dk, dv, None, None, None


flash_attention.register_autograd(_backward, setup_context=_setup)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    scale: float | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Causal self-attention of `(B, H, T, D)` tensors with the fused Triton kernels; differentiable.

    D must be 16, 32, 64 or 128; any T. float32, float16 and bfloat16 inputs accumulate in float32 (float32 inputs
    multiply in full float32, never TF32). `scale` defaults to `1/sqrt(D)`. `dropout_p` drops attention probabilities
    inside the kernel; the mask comes from `seed` (drawn from torch's default generator when None, so
    `torch.manual_seed` repeats a run), and the backward regenerates the same mask. `attention.attention_dropout_mask`
    returns that mask for checking. The output and the gradients come in q's memory order: for q viewed as
    `(B, H, T, D)` out of a `(B, T, ...)` projection, they are `(B, T, H, D)` in memory, as SDPA's flash kernels
    return them.
    """
    _check_attention(q, k, v, dropout_p)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if seed is not None:
        seed_t = torch.tensor(int(seed), dtype=torch.int64)
    elif dropout_p > 0.0:  # on the CPU generator: no device sync, and inside a compiled graph a node, not a constant
        seed_t = torch.randint(0, 2**31 - 1, (), dtype=torch.int64)
    else:
        seed_t = torch.zeros((), dtype=torch.int64)
    return flash_attention(q, k, v, float(dropout_p), scale, seed_t)[0]


def decode_attention(q, k_cache, v_cache, cache_lens, scale: float | None = None, max_len: int | None = None):
    """`decode.decode_attention` through its op: a few new queries against a KV cache with per-row lengths."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return decode_attention_op(q, k_cache, v_cache, cache_lens, scale, max_len)
