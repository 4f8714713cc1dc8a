"""Attention ops for gpt2tui, with one visible dispatch rule.

    from gpt2tui.kernels import causal_attention, decode_attention

Backends: ``"sdpa"`` (PyTorch's fused attention) and ``"reference"`` (the seed's explicit masked softmax, in
``reference.py``). ``"auto"`` picks the fastest available for the tensors' device; this build ships no Triton kernels,
so ``"auto"`` means ``"sdpa"`` everywhere. The environment variable ``GPT2TUI_ATTENTION`` overrides whatever the caller
(usually the model config) asked for. Auto falls back silently; an explicit request that cannot run raises.

This package knows nothing of GPT-2.
"""

from __future__ import annotations

import os

import torch

from .reference import causal_attention_ref, decode_attention_ref
from .sdpa import causal_attention_sdpa, decode_attention_sdpa

__all__ = [
    "BACKENDS",
    "AttentionBackendError",
    "causal_attention",
    "causal_attention_ref",
    "decode_attention",
    "decode_attention_ref",
    "resolve_backend",
]

BACKENDS = ("auto", "sdpa", "reference")
ENV_VAR = "GPT2TUI_ATTENTION"


class AttentionBackendError(ValueError):
    """An attention backend was asked for by name and cannot run here."""


def resolve_backend(backend: str | None = None, device: torch.device | str | None = None) -> str:
    """The dispatch rule: environment over argument over ``"auto"``; auto picks the fastest that runs on ``device``."""
    requested = os.environ.get(ENV_VAR) or backend or "auto"
    if requested == "triton":
        raise AttentionBackendError(
            "attention backend 'triton' is not available: this build has no Triton kernels; use auto, sdpa or reference"
        )
    if requested not in BACKENDS:
        source = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "attn_backend"
        raise AttentionBackendError(
            f"unknown attention backend {requested!r} (from {source}); choose one of: {', '.join(BACKENDS)}"
        )
    return "sdpa" if requested == "auto" else requested


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal self-attention of ``(B, H, T, D)`` tensors; ``scale`` defaults to ``1/sqrt(D)``.

    ``dropout_p`` drops attention probabilities (training only: pass 0.0 in eval).
    """
    if resolve_backend(backend, q.device) == "reference":
        return causal_attention_ref(q, k, v, dropout_p=dropout_p, scale=scale)
    return causal_attention_sdpa(q, k, v, dropout_p=dropout_p, scale=scale)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """A few new queries ``(B, H, n, D)`` against a KV cache ``(B, H, S_max, D)`` with per-row lengths ``(B,)``.

    The new queries' keys and values are already written to the cache and counted in ``cache_lens``; query ``i`` of
    ``n`` in row ``b`` sits at position ``cache_lens[b] - n + i`` and sees the keys up to it. ``max_len``, if given,
    must equal ``max(cache_lens)``: it lets a fallback read only the filled part without syncing the device.
    """
    if resolve_backend(backend, q.device) == "reference":
        return decode_attention_ref(q, k_cache, v_cache, cache_lens, scale=scale)
    return decode_attention_sdpa(q, k_cache, v_cache, cache_lens, scale=scale, max_len=max_len)
