"""Plain PyTorch attention: the CPU fallback, the readable twin of every kernel, and the test oracle.

Shapes follow the kernels: `(B, H, T, D)` for queries, keys and values. `upcast=True` computes in float32 (or keeps
float64) and casts the result back, which is how tests build the high-precision reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _upcast(upcast: bool, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if not upcast:
        return tensors
    return tuple(t if t.dtype == torch.float64 else t.float() for t in tensors)


def causal_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    scale: float | None = None,
    upcast: bool = False,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seed's explicit masked-softmax causal attention: softmax(q kᵀ · scale + mask) v.

    `dropout_mask` (booleans broadcastable to `(B, H, T, S)`, True = keep) replaces the random draw, so a test can
    apply exactly the mask a fused kernel used: kept probabilities are scaled by `1 / (1 - dropout_p)`.
    """
    dtype = q.dtype
    q, k, v = _upcast(upcast, q, k, v)
    T, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    # Bottom-right aligned, so T < S (queries at the end of the keys) means what it does in a KV cache.
    future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1)
    att = att.masked_fill(future, float("-inf"))
    att = torch.softmax(att, dim=-1)
    if dropout_mask is not None:
        att = att * dropout_mask / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return (att @ v).to(dtype)  # (B, H, T, D)


def decode_mask(cache_lens: torch.Tensor, n_new: int, n_keys: int) -> torch.Tensor:
    """Which cached keys each new query sees: `(B, 1, n_new, n_keys)` booleans.

    Convention shared by every decode path: the new queries' own keys are already in the cache, `cache_lens[b]`
    counts them, and query i of n in row b sits at position `cache_lens[b] - n + i`.
    """
    device = cache_lens.device
    q_pos = cache_lens[:, None] - n_new + torch.arange(n_new, device=device)  # (B, n)
    k_pos = torch.arange(n_keys, device=device)  # (S,)
    return (k_pos[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, n, S)


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """A few new queries per row `(B, H, n, D)` against a cache `(B, H, S_max, D)` with per-row valid lengths."""
    dtype = q.dtype
    q, k_cache, v_cache = _upcast(upcast, q, k_cache, v_cache)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k_cache.transpose(-2, -1)) * scale  # (B, H, n, S_max)
    att = att.masked_fill(~decode_mask(cache_lens, q.shape[-2], k_cache.shape[-2]), float("-inf"))
    att = torch.softmax(att, dim=-1)
    return (att @ v_cache).to(dtype)  # (B, H, n, D)
