"""Fused causal flash attention in Triton: forward, backward and attention dropout.

Layers, as in flash-attention and Liger-Kernel: `@triton.jit` kernels (here) → host launchers (`_forward`, `_backward`,
here) → the custom ops `torch.ops.gpt2tui.flash_attention` with its autograd (`library.py`) → the public
`causal_attention` (`library.py`, and `ops.py`'s dispatch). Its PyTorch twin is `reference.causal_attention_ref`.
The launchers are plain `kernel[grid](...)` calls: what host time they cost, `torch.compile` and CUDA graphs remove.

The algorithm (FlashAttention-2): one program owns a block of queries and streams the keys past it, keeping a running
max `m` and sum `l` of the softmax (online softmax, in base 2: scores are pre-multiplied by `scale·log2(e)` so the
exponential is one `exp2`). Keys strictly left of the query block need no mask; only the blocks on the diagonal are
masked, so the causal loop is split in two. The forward saves `lse = m + log2(l)` per query, which is all the backward
needs to rebuild the probabilities: `P = exp2(S·scale·log2e - lse)`. The backward runs two kernels, neither with
atomics: first one program per query block computes that block's `Δ = rowsum(dO ∘ O)`, stores it and accumulates dQ;
then one program per key block accumulates dK and dV over the queries that see it, reading the stored Δ. (Δ was a
pre-pass kernel of its own: a launch and a pass over O and dO more, for a sum the dQ program can make from tiles it
mostly loads anyway.)

Dropout happens inside the kernels: whether probability (b·h, i, j) is kept is a Philox draw from a seed and the
counter `((b·H + h)·T + i)·T + j`, so the backward regenerates exactly the forward's mask without storing it, and the
mask does not depend on block sizes. The softmax statistics are those of the undropped probabilities, as in
`F.dropout(softmax(S))`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import (
    _cdiv,
    _delta_at,
    _interpreting,
    _layout_of,
    _new_tensor,
    _next_power_of_2,
    _on_device,
    _stats_layout,
)

LOG2E = 1.4426950408889634


# -- kernels ------------------------------------------------------------------------------------------------------------


@triton.jit
def _keep(seed, dropout_p, bh, T, q_idx, k_idx):
    """The dropout mask of one tile: a pure function of (seed, b·h, i, j). `q_idx`, `k_idx` broadcast to the tile."""
    counter = (bh.to(tl.int64) * T + q_idx) * T + k_idx
    return tl.rand(seed, counter) >= dropout_p


@triton.jit
def _accumulate(total, carry, tile, COMPENSATE: tl.constexpr):
    """total + tile. In float32 the sum is compensated (Kahan): `acc += tl.dot(...)` compiles to one FMA chain over
    every query of a key block (or key of a query block), whose rounding error grows with T; carrying each add's lost
    low bits keeps the error at one tile's, as SDPA's tiled kernels have it. Half precisions keep the fused chain."""
    if COMPENSATE:
        y = tile - carry
        t = total + y
        carry = (t - total) - y
        total = t
    else:
        total = total + tile
    return total, carry


@triton.jit
def _load_kv(k_base, v_base, stride_kt, stride_vt, offs_n, T, D: tl.constexpr, MASKED: tl.constexpr):
    """A tile of K rows and V rows as they lie in memory (D contiguous); K is transposed inside `tl.dot`, the layout
    tensor cores take. Only diagonal tiles can reach past the last key, so only they pay for bounds masks."""
    offs_d = tl.arange(0, D)
    k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptrs, mask=offs_n[:, None] < T, other=0.0)
        v = tl.load(v_ptrs, mask=offs_n[:, None] < T, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, seed, dropout_p, bh, T, qk_scale,
    offs_m, lo, hi,
    BLOCK_N: tl.constexpr, D: tl.constexpr, DIAGONAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(k_base, v_base, stride_kt, stride_vt, offs_n, T, D, DIAGONAL)  # 2 × (BLOCK_N, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if DIAGONAL:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(_keep(seed, dropout_p, bh, T, offs_m[:, None], offs_n[None, :]), p, 0.0)
        acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["seed"])
def _attn_fwd_kernel(
    Q, K, V, OUT, LSE,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
    H, T, T_bucket, qk_scale, seed, dropout_p,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
):
    # Heads vary fastest and query blocks run last-first: the blocks at the bottom of the causal triangle carry the
    # most keys, so launching them first keeps the tail of the grid short.
    bh = tl.program_id(0)
    start_m = tl.num_programs(1) - 1 - tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < T
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # (BM, D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    lo = start_m * BLOCK_M
    # Keys left of the block: every query sees all of them.
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, seed, dropout_p, bh, T,
                               qk_scale, offs_m, 0, lo, BLOCK_N, D, False, DROPOUT, PRECISION)
    # The diagonal: masked. Visited left to right, so each row's first tile holds its own key and `m` turns finite.
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, seed, dropout_p, bh, T,
                               qk_scale, offs_m, lo, tl.minimum(lo + BLOCK_M, T), BLOCK_N, D, True, DROPOUT, PRECISION)

    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * (1.0 / (1.0 - dropout_p))
    o_base = OUT + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], acc.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _dkdv_tiles(
    dk, dv, c_dk, c_dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, seed, dropout_p, bh, T,
    qk_scale, offs_n, lo, hi,
    BLOCK_M: tl.constexpr, D: tl.constexpr, DIAGONAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    COMPENSATE: tl.constexpr,
):
    offs_d = tl.arange(0, D)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        # +inf for rows past the end makes their probabilities exactly 0.
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M) = Sᵀ
        p_t = tl.exp2(s_t - lse[None, :])
        if DIAGONAL:
            p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M) = (dO Vᵀ)ᵀ
        if DROPOUT:
            keep_t = _keep(seed, dropout_p, bh, T, offs_m[None, :], offs_n[:, None])  # (BLOCK_N, BLOCK_M)
            inv_keep = 1.0 / (1.0 - dropout_p)
            pd_t = tl.where(keep_t, p_t * inv_keep, 0.0)
            dp_t = tl.where(keep_t, dp_t * inv_keep, 0.0)
        else:
            pd_t = p_t
        dv, c_dv = _accumulate(dv, c_dv, tl.dot(pd_t.to(do.dtype), do, input_precision=PRECISION), COMPENSATE)
        ds_t = p_t * (dp_t - delta[None, :])
        dk, c_dk = _accumulate(dk, c_dk, tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION), COMPENSATE)
    return dk, dv, c_dk, c_dv


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, STATS, DK, DV,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot, stride_gb, stride_gh, stride_gt,
    H, T, T_bucket, delta_at, qk_scale, sm_scale, seed, dropout_p,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    COMPENSATE: tl.constexpr,
):
    """One key block: dV = Σ_i Pdᵀ dO and dK = Σ_i dSᵀ Q · scale over the queries at or after it. STATS holds the
    log-sum-exp `(B·H, T)` and, from `delta_at` on, Δ `(B·H, T)`."""
    bh = tl.program_id(0)
    start_n = tl.program_id(1) * BLOCK_N  # the first key blocks see the most queries: they launch first
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    col_ok = offs_n[:, None] < T
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :], mask=col_ok,
                other=0.0)  # (BLOCK_N, D)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :], mask=col_ok,
                other=0.0)  # (BLOCK_N, D)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    lse_base = STATS + bh.to(tl.int64) * T
    delta_base = STATS + delta_at + bh.to(tl.int64) * T
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    c_dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)  # the compensations (float32 inputs only)
    c_dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    # Queries on the diagonal (masked), then every query below it (unmasked).
    diag_hi = tl.minimum(start_n + BLOCK_N, T)
    dk, dv, c_dk, c_dv = _dkdv_tiles(dk, dv, c_dk, c_dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt,
                                     stride_dot, seed, dropout_p, bh, T, qk_scale, offs_n, start_n, diag_hi, BLOCK_M, D,
                                     True, DROPOUT, PRECISION, COMPENSATE)
    dk, dv, c_dk, c_dv = _dkdv_tiles(dk, dv, c_dk, c_dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt,
                                     stride_dot, seed, dropout_p, bh, T, qk_scale, offs_n, diag_hi, T, BLOCK_M, D,
                                     False, DROPOUT, PRECISION, COMPENSATE)
    g = b * stride_gb + h * stride_gh + offs_n[:, None] * stride_gt + offs_d[None, :]
    tl.store(DK + g, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok)
    tl.store(DV + g, dv.to(DV.dtype.element_ty), mask=col_ok)


@triton.jit
def _dq_tiles(
    dq, c_dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, seed, dropout_p, bh, T, qk_scale,
    offs_m, lo, hi,
    BLOCK_N: tl.constexpr, D: tl.constexpr, DIAGONAL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    COMPENSATE: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_kv(k_base, v_base, stride_kt, stride_vt, offs_n, T, D, DIAGONAL)  # 2 × (BLOCK_N, D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        if DIAGONAL:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        if DROPOUT:
            keep = _keep(seed, dropout_p, bh, T, offs_m[:, None], offs_n[None, :])
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq, c_dq = _accumulate(dq, c_dq, tl.dot(ds.to(k.dtype), k, input_precision=PRECISION), COMPENSATE)
    return dq, c_dq


@triton.jit(do_not_specialize=["seed"])
def _attn_bwd_dq_kernel(
    Q, K, V, OUT, DO, STATS, DQ,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot, stride_dob, stride_doh, stride_dot, stride_gb, stride_gh, stride_gt,
    H, T, T_bucket, delta_at, qk_scale, sm_scale, seed, dropout_p,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    COMPENSATE: tl.constexpr,
):
    """One query block: Δ = rowsum(dO ∘ O), stored for the dK/dV kernel that runs next, then dQ = Σ_j dS K · scale
    over the keys it sees."""
    bh = tl.program_id(0)
    start_m = tl.num_programs(1) - 1 - tl.program_id(1)  # the last query blocks see the most keys: they launch first
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < T
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    o = tl.load(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    # Δ_i = Σ_d dO_id · O_id, the row term of the softmax gradient (with dropout too: O already carries the mask).
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(STATS + delta_at + bh.to(tl.int64) * T + offs_m, delta, mask=row_ok)
    lse = tl.load(STATS + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=float("inf"))
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    c_dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)  # the compensation (float32 inputs only)
    lo = start_m * BLOCK_M
    dq, c_dq = _dq_tiles(dq, c_dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, seed, dropout_p, bh, T,
                         qk_scale, offs_m, 0, lo, BLOCK_N, D, False, DROPOUT, PRECISION, COMPENSATE)
    dq, c_dq = _dq_tiles(dq, c_dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, seed, dropout_p, bh, T,
                         qk_scale, offs_m, lo, tl.minimum(lo + BLOCK_M, T), BLOCK_N, D, True, DROPOUT, PRECISION,
                         COMPENSATE)
    g = DQ + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gt + offs_d[None, :]
    tl.store(g, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dropout_mask_kernel(MASK, H, T, seed, dropout_p, BLOCK: tl.constexpr):
    """Writes the keep-mask the attention kernels use, for tests and for the reference twin."""
    start_m = tl.program_id(0)
    start_n = tl.program_id(1)
    bh = tl.program_id(2)
    offs_m = start_m * BLOCK + tl.arange(0, BLOCK)
    offs_n = start_n * BLOCK + tl.arange(0, BLOCK)
    keep = _keep(seed, dropout_p, bh, T, offs_m[:, None], offs_n[None, :])
    ptrs = MASK + (bh.to(tl.int64) * T + offs_m[:, None]) * T + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m[:, None] < T) & (offs_n[None, :] < T))


# -- block sizes --------------------------------------------------------------------------------------------------------


def _configs(pairs, warps_stages, fixed):
    """Autotuning candidates; one fixed config under the interpreter or when $GPT2TUI_TRITON_AUTOTUNE is 0."""
    if _interpreting():
        # The interpreter runs each tile in NumPy: one modest size, no tuning sweep.
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    if os.environ.get("GPT2TUI_TRITON_AUTOTUNE", "1") == "0":
        # Tests on CUDA try many shapes and dtypes; tuning each would compile hundreds of variants.
        m, n, w, s = fixed
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n in pairs
        for w, s in warps_stages
    ]


# Tuned per (power-of-two bucket of T, head dim, dropout), not per exact T: a chat prefills a different length every
# turn, and re-tuning on each would cost more than it saves. Every pair keeps the larger block a multiple of the
# smaller, which the diagonal split relies on.
_TUNE_KEY = ["T_bucket", "D", "DROPOUT", "PRECISION"]
_attn_fwd = triton.autotune(
    _configs([(128, 64), (128, 128), (64, 64)], [(4, 3), (8, 3), (8, 4)], (64, 32, 4, 2)), key=_TUNE_KEY
)(_attn_fwd_kernel)
_attn_bwd_dkdv = triton.autotune(
    _configs([(32, 64), (32, 128), (64, 64)], [(4, 2), (4, 3), (4, 5), (8, 3)], (32, 64, 4, 2)), key=_TUNE_KEY
)(_attn_bwd_dkdv_kernel)
_attn_bwd_dq = triton.autotune(
    _configs([(64, 32), (128, 32), (64, 64)], [(4, 2), (4, 3), (4, 5), (8, 3)], (64, 32, 4, 2)), key=_TUNE_KEY
)(_attn_bwd_dq_kernel)


# -- host launchers -----------------------------------------------------------------------------------------------------


def _precision(dtype: torch.dtype) -> str:
    # float32 in must mean float32 products: TF32 would make the kernel 10³× less exact than SDPA in float32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _empty(shape, dtype, device, stride=None) -> torch.Tensor:
    # Every buffer the kernels fill comes from here, so a test can hand out poisoned memory and prove every element
    # gets written.
    return _new_tensor(shape, dtype, device, stride)


def _forward(q, k, v, sm_scale: float, dropout_p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The output `(B, H, T, D)`, in q's memory order, and one float32 statistics buffer: the log-sum-exp (base 2) of
    the `B·H·T` rows, then room for the backward's Δ at `_delta_at(B·H·T)` (`_stats_layout`)."""
    B, H, T, D = q.shape
    # In q's memory order, as SDPA's flash kernels return it: for the model's head views a (B, H, T, D)-contiguous
    # result would cost a copy.
    o, stats = _empty(*_layout_of(q)), _empty(*_stats_layout(B, H, T, q.device))
    T_bucket, dropout = _next_power_of_2(T), dropout_p > 0.0
    _attn_fwd[lambda meta: (B * H, _cdiv(T, meta["BLOCK_M"]))](
        q, k, v, o, stats,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        H, T, T_bucket, sm_scale * LOG2E, seed, dropout_p,
        D=D, DROPOUT=dropout, PRECISION=_precision(q.dtype),
    )  # fmt: skip
    return o, stats


def _backward(do, q, k, v, o, stats, sm_scale: float, dropout_p: float, seed: int):
    """dq, dk, dv in q's memory order. `stats` is the forward's statistics buffer; the dQ kernel writes Δ into it."""
    B, H, T, D = q.shape
    layout = _layout_of(q)
    dq, dk, dv = _empty(*layout), _empty(*layout), _empty(*layout)  # 3 × (B, H, T, D)
    T_bucket, dropout = _next_power_of_2(T), dropout_p > 0.0
    constexprs = dict(D=D, DROPOUT=dropout, PRECISION=_precision(q.dtype), COMPENSATE=q.dtype == torch.float32)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    common = (*do.stride()[:3], *dq.stride()[:3], H, T, T_bucket, _delta_at(B * H * T), sm_scale * LOG2E, sm_scale,
              seed, dropout_p)
    # dQ first: it leaves Δ behind for dK/dV (kernels on one stream run in order).
    _attn_bwd_dq[lambda meta: (B * H, _cdiv(T, meta["BLOCK_M"]))](
        q, k, v, o, do, stats, dq, *strides, *o.stride()[:3], *common, **constexprs
    )
    _attn_bwd_dkdv[lambda meta: (B * H, _cdiv(T, meta["BLOCK_N"]))](
        q, k, v, do, stats, dk, dv, *strides, *common, **constexprs
    )
    return dq, dk, dv


def attention_dropout_mask(seed: int, B: int, H: int, T: int, dropout_p: float, device="cpu") -> torch.Tensor:
    """The keep-mask `(B, H, T, T)` (bool) that `causal_attention(..., dropout_p, seed=seed)` applies."""
    mask = _empty((B, H, T, T), torch.int8, device)
    block = 32
    with _on_device(mask):
        _dropout_mask_kernel[(_cdiv(T, block), _cdiv(T, block), B * H)](
            mask, H, T, int(seed), float(dropout_p), BLOCK=block
        )
    return mask.bool()
