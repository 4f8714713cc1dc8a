"""PyTorch's fused scaled_dot_product_attention behind the same two ops: the default off CUDA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import decode_mask


def causal_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, scale: float | None = None
) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)  # (B, H, T, D)


def decode_attention_sdpa(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    B, _, n, _ = q.shape
    # Only the filled prefix of the static cache takes part; `max_len` is the caller's host-side max(cache_lens),
    # which spares a device sync here.
    S = k_cache.shape[-2] if max_len is None else max_len
    k, v = k_cache[:, :, :S], v_cache[:, :, :S]  # (B, H, S, D)
    if B == 1 and n == 1 and max_len is not None:
        # One query at the end of one row sees every valid key: no mask, SDPA's fastest path.
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=decode_mask(cache_lens, n, S), scale=scale)
