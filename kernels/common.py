"""What the ops and their launchers share: the backend error and host-side helpers. Imports neither Triton nor
the ops, so every module of the folder can import it."""

from __future__ import annotations

import contextlib
import os

import torch


class AttentionBackendError(ValueError):
    """An attention backend was asked for by name and cannot run here."""


HEAD_DIMS = (16, 32, 64, 128)  # what the Triton kernels take
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"causal_attention wants q, k, v of one shape (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"the Triton attention supports head dims {HEAD_DIMS}; got {q.shape[-1]}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"the Triton attention takes float32, float16 or bfloat16 q, k, v of one dtype; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k and v must be on one device")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Host-side block arithmetic for the launchers, without importing Triton for it.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _on_device(t: torch.Tensor):
    """A context that makes `t`'s CUDA device current, for the launches inside it: Triton launches on the current
    device, so with `t` on cuda:1 and cuda:0 current the kernels would run on cuda:0."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.get_device())
    return _NO_SWITCH


_NO_SWITCH = contextlib.nullcontext()  # reusable: it holds no state


def _new_tensor(shape, dtype, device, stride=None) -> torch.Tensor:
    """An uninitialised tensor, strided when `stride` is given. torch's functions are looked up per call: tests
    poison them to prove every element a kernel should write gets written."""
    if stride is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty_strided(shape, stride, dtype=dtype, device=device)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any strides but the head dim's, which must be 1 for vector loads.
    return t if t.stride(-1) == 1 else t.contiguous()


def _delta_at(n: int) -> int:
    """Where Δ starts in the statistics buffer of `n` rows: past the n log-sum-exps, rounded up to a multiple of 16
    floats. Triton specializes an int argument on divisibility by 16, so the kernels know Δ's loads are aligned."""
    return -(-n // 16) * 16


def _stats_layout(B: int, H: int, T: int, device) -> tuple:
    n = B * H * T
    return (_delta_at(n) + n,), torch.float32, device, None


def _layout_of(t: torch.Tensor) -> tuple:
    """(shape, dtype, device, stride) of an uninitialised `(B, H, T, D)` tensor like `t`, in `t`'s memory order (stride
    None: contiguous), for `_new_tensor`. A model's q is `(B, T, H, D)` in memory (heads viewed out of one projection);
    an output laid out the same way makes the model's `y.transpose(1, 2).contiguous().view(B, T, C)`, and autograd's
    backward of those views, free."""
    B, H, T, D = shape = t.shape
    if t.stride(1) < t.stride(2):  # heads inside tokens
        return shape, t.dtype, t.device, (T * H * D, D, H * D, 1)
    return shape, t.dtype, t.device, None


