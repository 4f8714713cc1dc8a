"""Attention ops for gpt2tui, with one visible dispatch rule.

    from gpt2tui.kernels import causal_attention, decode_attention

Backends:

- ``"triton"``: the fused kernels in ``attention.py`` (training forward and backward, prefill) and ``decode.py``
  (queries against a KV cache, split across programs), reached through the custom ops of ``library.py``. They run on
  CUDA, and on the CPU only in Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI tests them.
- ``"sdpa"``: PyTorch's ``scaled_dot_product_attention`` (``sdpa.py``).
- ``"reference"``: the seed's explicit masked softmax (``reference.py``), the oracle of the other two.

The rule, decided per call from the tensors: the environment variable ``GPT2TUI_ATTENTION`` overrides whatever the
caller (usually the model config's ``attn_backend``) asked for. ``"auto"`` takes Triton when the tensors are on CUDA,
Triton imports and the head dim and dtype are ones the kernels take; otherwise SDPA. Auto falls back silently; an
explicit ``"triton"`` that cannot run raises ``AttentionBackendError`` saying why.

The folder knows nothing of GPT-2, and has no ``__init__.py`` (README, "Layout", says why): setup.py writes the
installed package's, which re-exports this module. The Triton modules are imported only when a kernel first runs
(``library.py``'s deferred imports), so importing the ops never pulls in Triton, and the interpreter switch, read when
kernels are decorated, can still be set by then.
"""

from __future__ import annotations

import os

import torch

from . import library
from .common import DTYPES, HEAD_DIMS, AttentionBackendError, _interpreting
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

BACKENDS = ("auto", "triton", "sdpa", "reference")
ENV_VAR = "GPT2TUI_ATTENTION"


_triton_import: dict[str, str | None] = {}  # the answer, once asked


def _triton_import_error() -> str | None:
    if torch.compiler.is_compiling():
        # Tracing: the answer an eager call found, else "it imports" (the op then imports it when run). Tracing an
        # import would break the graph, and torch.compiler.assume_constant_result, the tool for this, imports
        # torch._dynamo, and with it Triton, when this module loads: before a test's interpreter switch, and 2 s.
        return _triton_import.get("error")
    if "error" not in _triton_import:
        try:
            import triton  # noqa: F401  (deferred: only a request for Triton pays for importing it)
            import triton.language  # noqa: F401

            _triton_import["error"] = None
        except Exception as e:  # an installed but broken Triton counts as absent
            _triton_import["error"] = f"Triton does not import ({type(e).__name__}: {e}); pip install triton"
    return _triton_import["error"]


def _triton_unavailable(device: torch.device | str | None, head_dim: int | None, dtype: torch.dtype | None) -> str | None:
    """Why the Triton kernels cannot take these tensors, or None when they can."""
    kind = torch.device(device).type if device is not None else "cpu"
    if kind != "cuda" and not (kind == "cpu" and _interpreting()):
        return f"the tensors are on {kind}; the kernels run on CUDA (or on the CPU under TRITON_INTERPRET=1)"
    if head_dim is not None and head_dim not in HEAD_DIMS:
        return f"head dim {head_dim} is not one of {HEAD_DIMS}"
    if dtype is not None and dtype not in DTYPES:
        return f"dtype {dtype} is not float32, float16 or bfloat16"
    return _triton_import_error()


def resolve_backend(
    backend: str | None = None,
    device: torch.device | str | None = None,
    head_dim: int | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """The dispatch rule: environment over argument over ``"auto"``; auto picks the fastest that runs on ``device``."""
    from_env = os.environ.get(ENV_VAR)
    requested = from_env or backend or "auto"
    if requested not in BACKENDS:
        source = f"${ENV_VAR}" if from_env else "attn_backend"
        raise AttentionBackendError(
            f"unknown attention backend {requested!r} (from {source}); choose one of: {', '.join(BACKENDS)}"
        )
    if requested == "auto":
        # The interpreter is for tests that ask for Triton by name; auto never picks it on the CPU.
        on_cuda = device is not None and torch.device(device).type == "cuda"
        return "triton" if on_cuda and _triton_unavailable(device, head_dim, dtype) is None else "sdpa"
    if requested == "triton":
        reason = _triton_unavailable(device, head_dim, dtype)
        if reason is not None:
            raise AttentionBackendError(
                f"attention backend 'triton' cannot run here: {reason}; use auto, sdpa or reference"
            )
    return requested


def _backend_for(q: torch.Tensor, backend: str | None) -> str:
    return resolve_backend(backend, q.device, q.shape[-1], q.dtype)


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
    chosen = _backend_for(q, backend)
    if chosen == "triton":  # through the custom op: one node of a compiled graph (library.py says why)
        return library.causal_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if chosen == "reference":
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
    must equal ``max(cache_lens)``: it lets every path read only the filled part without syncing the device. Without
    it every path reads the whole cache, masked by ``cache_lens``, and still never syncs: the form a decode step
    captured in a CUDA graph uses, since its lengths change on the device between replays.
    """
    chosen = _backend_for(q, backend)
    if chosen == "triton":
        return library.decode_attention(q, k_cache, v_cache, cache_lens, scale=scale, max_len=max_len)
    if chosen == "reference":
        return decode_attention_ref(q, k_cache, v_cache, cache_lens, scale=scale)
    return decode_attention_sdpa(q, k_cache, v_cache, cache_lens, scale=scale, max_len=max_len)
