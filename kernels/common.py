"""What the ops and their launchers share: the backend error and host-side helpers. Imports neither Triton nor
the ops, so every module of the folder can import it."""

from __future__ import annotations

import contextlib
import os

import torch


class AttentionBackendError(ValueError):
    """An attention backend was asked for by name and cannot run here."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Host-side block arithmetic for the launchers. `triton.cdiv` and `triton.next_power_of_2` are constexpr functions in
# recent Triton, which cost ~2 µs a call on the host; a decode step made four such calls per layer.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _on_device(t: torch.Tensor):
    """A context that makes `t`'s CUDA device current, for the launches inside it: Triton launches on the current
    device, so with `t` on cuda:1 and cuda:0 current the kernels would run on cuda:0. Switching costs host time on
    every call, so only when needed."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():  # neither makes a torch.device: ~0.5 µs less
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
    backward of those views, free. Strided in one call rather than allocated and transposed: ~2.5 µs less host time
    per buffer, four buffers per training step."""
    B, H, T, D = shape = t.shape
    if t.stride(1) < t.stride(2):  # heads inside tokens
        return shape, t.dtype, t.device, (T * H * D, D, H * D, 1)
    return shape, t.dtype, t.device, None


