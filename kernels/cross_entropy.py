"""Fused linear + cross-entropy: the loss of `h @ weight.T` against targets, without the logits.

    from gpt2tui.kernels.cross_entropy import linear_cross_entropy
    loss = linear_cross_entropy(h, weight, targets)  # == F.cross_entropy(F.linear(h, weight).float(), targets)

Why: a language model's last layer multiplies N = B·T hidden states by a vocabulary-wide matrix. For the 124M GPT-2
at B=8, T=1024 its float32 logits are 8·1024·50257·4 bytes = 1.6 GB, and the plain loss keeps several tensors that
size alive at once (the logits, their float32 copy, the saved log-softmax, then the gradient of the logits), more than
the whole rest of the model's activations. None of them is needed once the loss and the gradients of `h` and `weight`
are known.

How (Liger-Kernel's trick): the rows are taken in chunks of `chunk_size` (by default as many rows as keep a chunk's
float32 logits under 64 MiB on the CPU, 256 MiB on CUDA: 256 or 1024 rows of GPT-2's vocabulary). For each chunk, in
the forward pass:

1. `logits = h_chunk @ weight.T` in the inputs' dtype (bfloat16 under autocast), `(n, V)`;
2. per row, in float32: the log-sum-exp, the loss `lse - logits[target]`, the argmax (free: it rides on the max),
   and the gradient of the summed loss with respect to the logits, `softmax - onehot(target)` (zero on rows whose
   target is `ignore_index`), written over the chunk's logits;
3. `grad_h[chunk] = grad_logits @ weight` and `grad_weight += grad_logits.T @ h_chunk` (accumulated in float32).

So only one chunk's logits ever exist, and the backward pass has nothing left to do but scale the two saved gradients
by `grad_output` (and by `1 / n_valid` for the mean). Step 2 is plain PyTorch (`_rows_torch`) or a Triton kernel
(`backend="triton"`: one program per row, an online max and sum-exp over the row, then a second sweep writing the
gradient in place, as Liger's), whose readable twin `_rows_torch` is; auto takes PyTorch until the kernel has a GPU
figure. `linear_cross_entropy_ref` is the unfused oracle.

Under `torch.compile` the whole forward is one custom op, `torch.ops.gpt2tui.linear_cross_entropy`, with a fake
implementation and its autograd registered, so the compiler sees one opaque node and never the chunk loop; eager calls
go through an autograd.Function around the same function, which skips the custom op's dispatch. The gradients are computed only
for the inputs that need one (a frozen head, as in LoRA, skips the `(V, C)` product), and not at all under `no_grad`.

`reduction="none"` returns per-token losses, for evaluation and preference tuning. Per-token gradients cannot come out
of the summed gradients, so where one is needed it takes a simpler path: each chunk's plain loss under activation
checkpointing, which recomputes the chunk's logits in the backward pass instead of keeping them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .common import _interpreting, _next_power_of_2, _on_device
from .ops import _triton_import_error

__all__ = ["linear_cross_entropy", "linear_cross_entropy_ref"]

REDUCTIONS = ("mean", "sum", "none")
CE_BACKENDS = ("auto", "triton", "torch")
# A chunk's float32 logits stay under this. Larger on CUDA: each chunk adds its (V, C) product into the float32
# grad_weight, a pass over 4·V·C bytes, so fewer chunks mean less memory traffic, and a GPU has the room.
CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 256 << 20}


def default_chunk_size(vocab_size: int, device_type: str = "cpu") -> int:
    """Rows per chunk: the largest power of two whose float32 logits fit `CHUNK_BYTES`, between 16 and 4096 (for
    GPT-2's vocabulary 256 rows, 51 MB, on the CPU; 1024 rows on CUDA)."""
    rows = max(1, CHUNK_BYTES.get(device_type, CHUNK_BYTES["cpu"]) // (4 * vocab_size))
    return min(4096, max(16, 1 << (rows.bit_length() - 1)))


# -- the reference -------------------------------------------------------------------------------------------------


def linear_cross_entropy_ref(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """The unfused computation, the oracle: all `(N, V)` logits, then float32 (or float64) cross-entropy."""
    logits = F.linear(h, weight)  # (..., V)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = F.cross_entropy(logits.flatten(0, -2).to(dtype), targets.flatten(), ignore_index=ignore_index,
                           reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


# -- per-row loss and gradient of a chunk: PyTorch, and the Triton kernel ----------------------------------------


def _rows_torch(logits, targets, ignore_index, loss_out, argmax_out, need_grad):
    """Loss and argmax of each row of `logits` `(n, V)` into `loss_out`, `argmax_out` `(n,)`; with `need_grad` also
    returns `softmax - onehot(target)` (zero rows where the target is ignored) in the logits' dtype."""
    x = logits.float()  # (n, V): log-softmax in float32 (the same tensor when the logits are float32)
    valid = targets != ignore_index  # (n,)
    t = torch.where(valid, targets, 0)[:, None]  # (n, 1)
    lse = torch.logsumexp(x, dim=-1)  # (n,)
    torch.argmax(x, dim=-1, out=argmax_out)
    loss_out.copy_(torch.where(valid, lse - x.gather(1, t)[:, 0], 0.0))
    if not need_grad:
        return None
    x = x.sub_(lse[:, None]).exp_()  # softmax, in place
    x.scatter_add_(1, t, -valid[:, None].to(x.dtype))  # minus the one-hot of the target
    x.mul_(valid[:, None])  # ignored rows contribute nothing
    return x.to(logits.dtype)


@functools.lru_cache(maxsize=1)
def _triton_kernel():
    """The row kernel, built on first use: importing this module never imports Triton, and the interpreter switch
    (`TRITON_INTERPRET=1`, read when a kernel is decorated) can still be set until then."""
    import triton
    import triton.language as tl

    @triton.jit
    def _ce_rows_kernel(logits_ptr, stride_row, targets_ptr, loss_ptr, argmax_ptr, V, ignore_index,
                        BLOCK_V: tl.constexpr, WRITE_GRAD: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride_row
        target = tl.load(targets_ptr + row)
        valid = target != ignore_index
        t = tl.where(valid, target, 0)
        # Sweep 1: online max (with its first index) and sum of exponentials, in float32.
        m = float("-inf")
        s = 0.0
        best = 0
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            block_max = tl.max(x, axis=0)
            best = tl.where(block_max > m, tl.argmax(x, axis=0) + start, best)  # strict: the first maximum wins
            new_m = tl.maximum(m, block_max)
            s = s * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), axis=0)
            m = new_m
        lse = m + tl.log(s)
        x_t = tl.load(row_ptr + t).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - x_t, 0.0))
        tl.store(argmax_ptr + row, best)
        if WRITE_GRAD:  # sweep 2: softmax - onehot, over the logits
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                x = tl.load(row_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)
                g = tl.exp(x - lse) - tl.where(cols == t, 1.0, 0.0)
                g = tl.where(valid, g, 0.0)
                tl.store(row_ptr + cols, g.to(logits_ptr.dtype.element_ty), mask=cols < V)

    return _ce_rows_kernel


def _rows_triton(logits, targets, ignore_index, loss_out, argmax_out, need_grad):
    """`_rows_torch` as one Triton program per row; the gradient overwrites `logits`, which it returns."""
    n, V = logits.shape
    block = min(_next_power_of_2(V), 8192)
    with _on_device(logits):
        _triton_kernel()[(n,)](logits, logits.stride(0), targets, loss_out, argmax_out, V, ignore_index,
                               BLOCK_V=block, WRITE_GRAD=need_grad, num_warps=16 if block >= 4096 else 8)
    return logits if need_grad else None


# -- the op --------------------------------------------------------------------------------------------------------


def _forward(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    reduction: str,
    chunk_size: int,
    grad_h: bool,
    grad_weight: bool,
    use_triton: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(loss, argmax, n_valid, dh, dweight)` of `h` `(N, C)`, `weight` `(V, C)`, `targets` `(N,)`. `dh` and
    `dweight` are the gradients of the *summed* loss (empty where not asked for); the backward scales them."""
    N, C = h.shape
    V = weight.shape[0]
    dtype = h.dtype
    rows = _rows_triton if use_triton else _rows_torch
    need_grad = grad_h or grad_weight
    with torch.autocast(h.device.type, enabled=False):
        w = weight.to(dtype)  # (V, C): the matmuls run in h's dtype
        losses = torch.empty(N, dtype=torch.float32, device=h.device)  # (N,)
        argmax = torch.empty(N, dtype=torch.int64, device=h.device)  # (N,)
        dh = torch.empty(N, C, dtype=dtype, device=h.device) if grad_h else h.new_empty(0)  # (N, C)
        dw = torch.zeros(V, C, dtype=torch.float32, device=h.device) if grad_weight else weight.new_empty(0)
        for start in range(0, N, chunk_size):
            end = min(start + chunk_size, N)
            hc = h[start:end]  # (n, C)
            logits = hc @ w.t()  # (n, V)
            g = rows(logits, targets[start:end], ignore_index, losses[start:end], argmax[start:end], need_grad)
            if grad_h:
                torch.mm(g, w, out=dh[start:end])  # (n, C)
            if grad_weight:
                if dtype == torch.float32:
                    dw.addmm_(g.t(), hc)  # (V, C)
                else:
                    dw += (g.t() @ hc).float()  # (V, C)
        n_valid = (targets != ignore_index).sum().float()  # ()
        total = losses.sum(dtype=torch.float64)  # (); N numbers: float64 costs nothing and rounds once
        if reduction == "mean":
            loss = (total / n_valid).float()  # nan when every target is ignored, as F.cross_entropy
        elif reduction == "sum":
            loss = total.float()
        else:
            loss = losses
    return loss, argmax, n_valid, dh, dw.to(weight.dtype) if grad_weight else dw


def _scaled_grads(reduction, needs, grad_loss, n_valid, dh, dw):
    """The backward: the forward's gradients of the summed loss, times `grad_output` (over `n_valid` for the mean)."""
    if reduction == "none":
        raise RuntimeError("linear_cross_entropy: reduction='none' is forward-only in the fused op")
    scale = grad_loss / n_valid.clamp(min=1) if reduction == "mean" else grad_loss  # ()
    return dh * scale if needs[0] else None, dw * scale if needs[1] else None


class _LinearCrossEntropy(torch.autograd.Function):
    """The eager path: no custom-op dispatch (its first call alone imports ~900 modules, torch._dynamo among them)."""

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, reduction, chunk_size, grad_h, grad_weight, use_triton):
        loss, argmax, n_valid, dh, dw = _forward(h, weight, targets, ignore_index, reduction, chunk_size, grad_h,
                                                 grad_weight, use_triton)
        ctx.reduction, ctx.needs = reduction, (grad_h, grad_weight)
        ctx.save_for_backward(n_valid, dh, dw)
        ctx.mark_non_differentiable(argmax)
        return loss, argmax

    @staticmethod
    def backward(ctx, grad_loss, _argmax):
        return *_scaled_grads(ctx.reduction, ctx.needs, grad_loss, *ctx.saved_tensors), *(None,) * 7


# The same, as one node for torch.compile: `torch.ops.gpt2tui.linear_cross_entropy`, its outputs described by the fake
# implementation, its autograd registered (AOTAutograd traces the backward through it).
_linear_cross_entropy_op = torch.library.custom_op("gpt2tui::linear_cross_entropy", _forward, mutates_args=())


@_linear_cross_entropy_op.register_fake
def _(h, weight, targets, ignore_index, reduction, chunk_size, grad_h, grad_weight, use_triton):
    N = h.shape[0]
    loss = h.new_empty((N,) if reduction == "none" else (), dtype=torch.float32)
    return (
        loss,
        h.new_empty((N,), dtype=torch.int64),
        h.new_empty((), dtype=torch.float32),
        h.new_empty(h.shape) if grad_h else h.new_empty(0),
        torch.empty_like(weight) if grad_weight else weight.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    ctx.reduction, ctx.needs = inputs[4], (inputs[6], inputs[7])
    _, _, n_valid, dh, dw = output
    ctx.save_for_backward(n_valid, dh, dw)


def _backward(ctx, grad_loss, _argmax, _n_valid, _dh, _dw):
    return *_scaled_grads(ctx.reduction, ctx.needs, grad_loss, *ctx.saved_tensors), *(None,) * 7


_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


# -- the public function -------------------------------------------------------------------------------------------


def _use_triton(device: torch.device, backend: str | None) -> bool:
    backend = backend or "auto"
    if backend not in CE_BACKENDS:
        raise ValueError(f"unknown cross-entropy backend {backend!r}; choose one of: {', '.join(CE_BACKENDS)}")
    if backend == "torch":
        return False
    runs_here = device.type == "cuda" or (device.type == "cpu" and _interpreting())
    if backend == "auto":
        # The Triton row pass has run only in the interpreter so far: until a GPU session has compiled and timed it
        # (RESULTS.md), auto keeps the PyTorch rows on every device. An explicit "triton" runs it.
        return False
    if not runs_here:
        raise ValueError(f"cross-entropy backend 'triton' cannot run on {device.type} (CUDA, or the CPU under "
                         "TRITON_INTERPRET=1); use auto or torch")
    if _triton_import_error() is not None:
        raise ValueError(f"cross-entropy backend 'triton' cannot run here: {_triton_import_error()}")
    return True


def _chunked_none_with_grad(h, weight, targets, ignore_index, chunk_size):
    """Per-token losses that need a gradient: each chunk's plain loss, its logits recomputed in the backward."""

    def chunk_loss(hc, w, tc):
        return F.cross_entropy(F.linear(hc, w).float(), tc, ignore_index=ignore_index, reduction="none")

    return torch.cat([checkpoint(chunk_loss, h[s:s + chunk_size], weight, targets[s:s + chunk_size],
                                 use_reentrant=False) for s in range(0, h.shape[0], chunk_size)])


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    *,
    return_argmax: bool = False,
    backend: str | None = None,
):
    """`F.cross_entropy(F.linear(h, weight).float(), targets)` without materialising the logits.

    `h` `(..., C)`, `weight` `(V, C)`, `targets` `(...)` of ids in `[0, V)` or `ignore_index` (such positions add
    nothing, and are not counted in the mean; all ignored gives nan for the mean, as PyTorch). `reduction` is "mean",
    "sum" or "none" (per-token losses shaped like `targets`). Under autocast the matmuls run in its dtype, as
    `F.linear`'s would; the softmax is float32 always. `return_argmax=True` also returns each position's argmax over
    the vocabulary `(...)` (the predicted token, for accuracy; no extra pass over the logits). `backend`: "auto"
    (PyTorch rows for now: the Triton pass awaits a measured GPU run), "triton" (raises where it cannot run), "torch".
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of: {', '.join(REDUCTIONS)}")
    if weight.dim() != 2 or h.shape[-1] != weight.shape[1]:
        raise ValueError(f"h {tuple(h.shape)} and weight {tuple(weight.shape)} do not multiply: need (..., C), (V, C)")
    if targets.shape != h.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match h {tuple(h.shape)} without its last dim")
    shape = targets.shape
    h2, t1 = h.reshape(-1, h.shape[-1]).contiguous(), targets.reshape(-1).contiguous()  # (N, C), (N,)
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        h2 = h2.to(torch.get_autocast_dtype(device_type))
    chunk = chunk_size or default_chunk_size(weight.shape[0], h.device.type)
    if chunk < 1:
        raise ValueError(f"chunk_size must be positive, not {chunk}")
    grad = torch.is_grad_enabled()
    need_h, need_w = grad and h.requires_grad, grad and weight.requires_grad
    use_triton = _use_triton(h.device, backend)
    if reduction == "none" and (need_h or need_w):
        loss = _chunked_none_with_grad(h2, weight.to(h2.dtype), t1, ignore_index, chunk).view(shape)
        if not return_argmax:
            return loss
        with torch.no_grad():
            return loss, linear_cross_entropy(h2, weight, t1, ignore_index, "sum", chunk, return_argmax=True,
                                              backend=backend)[1].view(shape)
    args = (h2, weight, t1, ignore_index, reduction, chunk, need_h, need_w, use_triton)
    if torch.compiler.is_compiling():
        loss, argmax, *_ = _linear_cross_entropy_op(*args)
    else:
        loss, argmax = _LinearCrossEntropy.apply(*args)
    if reduction == "none":
        loss = loss.view(shape)
    return (loss, argmax.view(shape)) if return_argmax else loss
