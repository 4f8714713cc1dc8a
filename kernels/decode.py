"""Flash-decoding: a few new queries against a static KV cache with per-row lengths, in Triton.

    from gpt2tui.kernels.decode import decode_attention
    out = decode_attention(q, k_cache, v_cache, cache_lens, max_len=max(lens))  # (B, H, n, D)

Layout: kernels (`_decode_split_kernel`, `_decode_merge_kernel`) → host launcher (`_launch`) → public
`decode_attention` (the custom op `torch.ops.gpt2tui.decode_attention` in `library.py` wraps it for `torch.compile`). The plain PyTorch twin and oracle is `reference.decode_attention_ref`; the two share one convention:
the new queries' keys and values are already written to the cache and counted in `cache_lens`, and query i of n in row
b sits at position `cache_lens[b] - n + i` and sees the keys at positions <= its own.

Split-K ("flash-decoding"). With one or two new queries per row, one program per (row, head) leaves most of a GPU idle
when B·H is small (batch 1 of GPT-2 small is 12 programs for ~132 SMs). So the key range [0, max_len) is cut into
`num_splits` chunks of whole key blocks; program (b·h, query block, split) runs the online softmax over its chunk and
writes its normalised partial output (fp32) and its log-sum-exp (base 2) to scratch. A second small kernel merges the
splits: out = Σ_s 2^(lse_s − lse_max) · o_s / Σ_s 2^(lse_s − lse_max). A split that holds no key a query may see (its
chunk starts beyond that row's length or beyond the query's position) writes lse = −inf and o = 0 and so weighs nothing;
no NaN arises anywhere (every max is guarded before it is subtracted). With one split the first kernel writes the
output directly and the merge is not launched. (Merging in the same launch, by whichever split finishes last, was
tried: on an H100 and an H200, in a CUDA graph, the ticket's atomic round trip cost what the second launch did.)

Inference only: the output carries no autograd graph (no backward is defined), whatever `requires_grad` the inputs have.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .common import (
    DTYPES,
    HEAD_DIMS,
    _cdiv,
    _layout_of,
    _new_tensor,
    _next_power_of_2,
    _on_device,
    _unit_last,
)

__all__ = ["decode_attention", "choose_num_splits"]

_LOG2E = 1.4426950408889634

# Keys per inner step; a split is a whole number of these. Chosen by `benchmarks/tune_decode.py` on an H100 (RESULTS.md):
# at batch 1, bf16, D=64, 128-key blocks in splits of one block (none below three blocks) took 3.0–4.9 µs a layer
# call in a CUDA graph at 128–1024 cached keys, against 3.4–5.4 µs for 64-key blocks in splits of two. Of 16 settings
# it was the fastest at 1024 keys and over the whole cache, and within 0.4 µs of the fastest elsewhere. float32
# inputs and D=128 keep 64-key blocks: unmeasured with 128, and float32 with D=32 and 64 queries would then need
# 104 KiB of shared memory, more than consumer GPUs (sm_86/89/120) have (an sm_86 build: 106,752 bytes).
BLOCK_N = 128  # 16-bit inputs, D <= 64
BLOCK_N_OTHER = 64  # float32 inputs, or D = 128
MIN_BLOCKS_PER_SPLIT = 1  # a split reads at least this many key blocks: fewer keys than that and the merge costs more
# Caches of fewer key blocks than this are not split at all. Same run: at batch 1, one program reading a second 128-key
# block took ~0.9 µs more, while splitting and merging took ~1.6 µs more (256 keys: 3.9 µs unsplit, 4.6 µs in two).
MIN_BLOCKS_TO_SPLIT = 3
MAX_SPLITS = 64
MERGE_SPLITS = 32  # the merge reads up to this many splits' partials at once (a power of two)
PROGRAMS_PER_SM = 2  # the split heuristic's target occupancy
INTERPRETER_SMS = 4  # the "SM count" the heuristic assumes off CUDA (the interpreter runs programs one by one)


# ---------------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """fp32-accumulating a @ b; UPCAST multiplies in fp32 (exact for bf16 inputs: their products fit fp32).

    UPCAST exists only for Triton's interpreter, whose tl.dot multiplies bfloat16 bit patterns as integers
    (triton-lang/triton#11584: bf16 is "not supported yet" there). On a GPU it is always False.
    """
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision="ieee")  # "ieee": no TF32 for fp32 inputs; ignored for fp16/bf16
    return c


@triton.jit
def _decode_split_kernel(
    Q, K, V, Lens, Out, OPart, LSE,
    qk_scale,  # scale · log2(e): scores go straight to base 2
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_pbh, stride_ps, stride_pm,  # OPart (B·H, splits, n, D), fp32
    stride_lbh, stride_ls,  # LSE (B·H, splits, n), fp32
    H, N_Q, S_MAX, split_size,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DIRECT: tl.constexpr,  # one split: write the final output, no scratch, no merge
    UPCAST_DOT: tl.constexpr,  # interpreter + bf16 only, see _dot
):  # fmt: skip
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    split = tl.program_id(2)
    off_b = bh // H
    off_h = bh % H

    seq_len = tl.load(Lens + off_b).to(tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the n new ones
    offs_d = tl.arange(0, HEAD_DIM)
    q_pos = seq_len - N_Q + offs_m  # (BLOCK_M,) each query's position in the cache
    m_valid = offs_m < N_Q

    # int64 row offsets: a layer of a large cache can exceed 2^31 elements.
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh

    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=m_valid[:, None], other=0.0)

    # This program's keys: its split's chunk, cut at the last position any of its queries may see (< seq_len), and
    # never past the cache (a row longer than the cache is a caller error; clamping keeps the loads in bounds).
    lo = split * split_size
    last_q = seq_len - N_Q + tl.minimum((pid_m + 1) * BLOCK_M, N_Q) - 1
    hi = tl.minimum(tl.minimum(lo + split_size, last_q + 1), S_MAX)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (base-2 scores)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running Σ 2^(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_valid = offs_n < hi
        # K read transposed, (HEAD_DIM, BLOCK_N); masked loads never touch positions >= hi (stale cache entries).
        kt = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=n_valid[None, :], other=0.0)
        s = _dot(q, kt, UPCAST_DOT) * qk_scale  # (BLOCK_M, BLOCK_N) fp32
        visible = n_valid[None, :] & (offs_n[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet: no -inf - -inf
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=n_valid[:, None], other=0.0)
        # p is rounded to the input dtype for the second product, as flash-attention does on tensor cores.
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST_DOT)
        m_i = m_new

    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    o = acc / l_safe[:, None]  # 0 where the split saw nothing
    if DIRECT:
        o_ptrs = Out + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
        o_ptrs = o_ptrs + offs_m[:, None] * stride_om + offs_d[None, :]
        tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=m_valid[:, None])
    else:
        p_base = OPart + bh.to(tl.int64) * stride_pbh + split.to(tl.int64) * stride_ps
        tl.store(p_base + offs_m[:, None] * stride_pm + offs_d[None, :], o, mask=m_valid[:, None])
        lse = tl.where(has_keys, m_i + tl.log2(l_safe), float("-inf"))
        l_base = LSE + bh.to(tl.int64) * stride_lbh + split.to(tl.int64) * stride_ls
        tl.store(l_base + offs_m, lse, mask=m_valid)


@triton.jit
def _merge_row(
    p_row, l_row, o_row,
    stride_ps, stride_ls, num_splits,
    SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """One query's output from its splits' partials: Out = Σ_s 2^(lse_s − M) · o_s / Σ_s 2^(lse_s − M).

    `SPLITS` partials at a time, loaded together, so the read's latency is paid once per `SPLITS` splits; usually all
    of them fit one step. (Read one split after another, the merge was a chain of dependent L2 reads: ~0.4 µs a split
    on an H200, 8 splits the most of a batch-1 decode's 8 µs.)"""
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    m_run = tl.full([], float("-inf"), dtype=tl.float32)
    w_sum = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for s0 in range(0, num_splits, SPLITS):
        split = s0 + offs_s
        s_valid = split < num_splits
        lse = tl.load(l_row + split * stride_ls, mask=s_valid, other=float("-inf"))  # (SPLITS,)
        o = tl.load(p_row + split[:, None] * stride_ps + offs_d[None, :], mask=s_valid[:, None], other=0.0)  # (S, D)
        m_new = tl.maximum(m_run, tl.max(lse, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # every split so far empty: no -inf - -inf
        alpha = tl.exp2(m_run - m_safe)
        w = tl.exp2(lse - m_safe)  # 0 for an empty split (lse = -inf)
        w_sum = w_sum * alpha + tl.sum(w, 0)
        acc = acc * alpha + tl.sum(w[:, None] * o, 0)
        m_run = m_new
    out = acc / tl.where(w_sum > 0.0, w_sum, 1.0)
    tl.store(o_row + offs_d, out.to(o_row.dtype.element_ty))


@triton.jit
def _decode_merge_kernel(
    OPart, LSE, Out,
    stride_pbh, stride_ps, stride_pm,
    stride_lbh, stride_ls,
    stride_ob, stride_oh, stride_om,
    H, N_Q, num_splits,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
):  # fmt: skip
    # One program per (row·head, query), on one grid axis (the others stop at 65,535): for decode, one query per row,
    # a 16-row block would be 15/16 idle.
    pid = tl.program_id(0)
    bh = pid // N_Q
    m = pid % N_Q
    off_b = bh // H
    off_h = bh % H
    _merge_row(
        OPart + bh.to(tl.int64) * stride_pbh + m * stride_pm, LSE + bh.to(tl.int64) * stride_lbh + m,
        Out + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh + m * stride_om,
        stride_ps, stride_ls, num_splits, SPLITS, HEAD_DIM,
    )  # fmt: skip


# Triton reads TRITON_INTERPRET when a kernel is decorated (here, at import), so ask the kernel what it became.
_INTERPRETED = type(_decode_split_kernel).__name__ == "InterpretedFunction"


# ---------------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------------


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_sms(device: torch.device) -> int:
    if device.type == "cuda" and not _INTERPRETED:
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SMS


def _block_m(n: int) -> int:
    # tl.dot needs every block dimension >= 16 on a GPU, so even one query takes a 16-row block (15 rows masked).
    return 16 if n <= 16 else 32 if n <= 32 else 64


def choose_num_splits(programs: int, max_len: int, sm_count: int, block_n: int = BLOCK_N) -> int:
    """How many key chunks to split each (row, head, query block) into.

    `programs` is B·H·(query blocks), the programs an unsplit launch would have. Heuristic: aim for
    `PROGRAMS_PER_SM` programs per SM (a decode program is memory-latency bound; two per SM hide it better than one).
    If the unsplit launch already has that many, or the keys are fewer than `MIN_BLOCKS_TO_SPLIT` blocks, do not split;
    otherwise split just enough to reach it, but never into chunks under `MIN_BLOCKS_PER_SPLIT` key blocks (for short
    caches the merge costs more than the parallelism gains), and never into more than `MAX_SPLITS`. Examples on a
    132-SM H100/H200 (128-key blocks): B=1, H=12, 1024 keys → 8 splits; 256 keys → 1; B=16, H=12 → 2; B=32 → 1.
    (Measured on an H200 with 64-key blocks, bf16, D=64, device time in a CUDA graph: B=1, H=12, 1000 keys 12.3 µs
    unsplit → 6.6 µs; 16000 keys 167 µs → 21 µs; B=4, 16000 keys 167 µs → 55 µs.)
    """
    target = PROGRAMS_PER_SM * sm_count
    n_blocks = _cdiv(max_len, block_n)
    if programs >= target or n_blocks < MIN_BLOCKS_TO_SPLIT:
        return 1
    return max(1, min(_cdiv(target, programs), n_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))


def _launch(q, k_cache, v_cache, cache_lens, scale, max_len, num_splits):
    B, H, n, D = q.shape
    S_max = k_cache.shape[2]
    # In q's memory order, as the fused forward's output: the model's view back to (B, n, C) is free for a chunked
    # prefill too.
    out = _new_tensor(*_layout_of(q))  # (B, H, n, D)
    if B == 0 or H == 0:
        return out
    block_m = _block_m(n)
    m_blocks = _cdiv(n, block_m)
    block_n = BLOCK_N if q.element_size() == 2 and D <= 64 else BLOCK_N_OTHER
    n_blocks = _cdiv(max_len, block_n)
    if num_splits is None:
        splits = choose_num_splits(B * H * m_blocks, max_len, _device_sms(q.device), block_n)
        split_size = _cdiv(n_blocks, splits) * block_n
        splits = _cdiv(max_len, split_size)  # rounding to whole blocks may leave fewer chunks
    else:  # forced (tests): exactly this many programs per query block, even if some get no keys at all
        splits = num_splits
        split_size = _cdiv(n_blocks, splits) * block_n
    direct = splits == 1
    if direct:
        o_part = lse = out  # unused placeholders
        p_strides, l_strides = (0, 0, 0), (0, 0)
    else:
        o_part = _new_tensor((B * H, splits, n, D), torch.float32, q.device)  # (B·H, splits, n, D)
        lse = _new_tensor((B * H, splits, n), torch.float32, q.device)  # (B·H, splits, n)
        p_strides, l_strides = o_part.stride()[:3], lse.stride()[:2]
    o_strides = out.stride()[:3]
    _decode_split_kernel[(B * H, m_blocks, splits)](
        q, k_cache, v_cache, cache_lens, out, o_part, lse,
        scale * _LOG2E,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3], *o_strides, *p_strides, *l_strides,
        H, n, S_max, split_size,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, DIRECT=direct,
        UPCAST_DOT=_INTERPRETED and q.dtype == torch.bfloat16,
        num_warps=4,
    )  # fmt: skip
    if not direct:
        _decode_merge_kernel[(B * H * n,)](
            o_part, lse, out, *p_strides, *l_strides, *o_strides, H, n, splits,
            HEAD_DIM=D, SPLITS=min(_next_power_of_2(splits), MERGE_SPLITS),
            num_warps=1 if D <= 64 else 2,  # one row of D values per program
        )  # fmt: skip
    return out


def _check(q, k_cache, v_cache, cache_lens, num_splits) -> None:
    for name, t, rank in (("q", q, 4), ("k_cache", k_cache, 4), ("v_cache", v_cache, 4), ("cache_lens", cache_lens, 1)):
        if not isinstance(t, torch.Tensor) or t.dim() != rank:
            got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"decode_attention: {name} must be a {rank}-d tensor, got {got}")
    B, H, n, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"decode_attention: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    if (k_cache.shape[0], k_cache.shape[1], k_cache.shape[3]) != (B, H, D):
        raise ValueError(f"decode_attention: cache {tuple(k_cache.shape)} does not match q {tuple(q.shape)} in B, H or D")
    if tuple(cache_lens.shape) != (B,):
        raise ValueError(f"decode_attention: cache_lens must have shape ({B},), got {tuple(cache_lens.shape)}")
    if D not in HEAD_DIMS:
        raise ValueError(f"decode_attention: head dim {D} is not supported (choose one of {HEAD_DIMS})")
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            f"decode_attention: q, k_cache, v_cache must share one dtype of float32/float16/bfloat16, "
            f"got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if cache_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"decode_attention: cache_lens must be int32 or int64, got {cache_lens.dtype}")
    devices = {t.device for t in (q, k_cache, v_cache, cache_lens)}
    if len(devices) != 1:
        raise ValueError(f"decode_attention: all tensors must be on one device, got {sorted(map(str, devices))}")
    if q.device.type != "cuda" and not _INTERPRETED:
        raise ValueError(
            f"decode_attention: the Triton kernel needs CUDA tensors (got {q.device}), or TRITON_INTERPRET=1 set "
            "before this module was imported"
        )
    if n < 1 or n > k_cache.shape[2]:
        raise ValueError(f"decode_attention: {n} new queries do not fit a cache of {k_cache.shape[2]} positions")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"decode_attention: num_splits must be a positive int or None, got {num_splits!r}")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
    max_len: int | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention of ``n`` new queries per row against a KV cache with per-row lengths (Triton flash-decoding).

    Args:
        q: ``(B, H, n, D)`` new queries; ``n >= 1`` (1 to decode a token, more for a chunked prefill).
        k_cache, v_cache: ``(B, H, S_max, D)``, typically one layer's view of a larger static cache; any strides
            with a unit last one (others are made contiguous first). Entries at or beyond a row's length are never read.
        cache_lens: ``(B,)`` int32/int64 valid lengths on the same device, counting the new queries' own keys (already
            written): query ``i`` of ``n`` in row ``b`` sits at ``cache_lens[b] - n + i`` and sees keys at positions up
            to its own. Every row must hold at least ``n`` keys (not checked: that would sync the device).
        scale: score scale; defaults to ``1/sqrt(D)``.
        max_len: host int at least ``max(cache_lens)``, best equal to it: it sizes the key splits, and a smaller
            value silently drops keys. ``None`` takes the whole cache, ``S_max``: splits that lie past a row's length
            end at once, and nothing is read from the device, so the call can be captured in a CUDA graph.
        num_splits: force this many key splits (tests); ``None`` chooses with :func:`choose_num_splits`.

    Returns:
        ``(B, H, n, D)`` in ``q``'s dtype (float32, float16 or bfloat16; accumulation is float32). ``D`` must be 16,
        32, 64 or 128.

    Inference only: no backward is defined, and the result has no autograd history.

    Raises:
        ValueError: on wrong ranks, mismatched shapes, dtypes or devices, an unsupported ``D``, or CPU tensors
            without ``TRITON_INTERPRET=1``.
    """
    _check(q, k_cache, v_cache, cache_lens, num_splits)
    S_max = k_cache.shape[2]
    max_len = S_max if max_len is None else int(max_len)
    if not q.shape[2] <= max_len <= S_max:
        raise ValueError(f"decode_attention: max_len {max_len} must lie in [{q.shape[2]} (n), {S_max} (S_max)]")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q, k_cache, v_cache = _unit_last(q), _unit_last(k_cache), _unit_last(v_cache)
    # (No torch.no_grad(): the kernels record nothing for autograd, and the buffers they fill never require grad.)
    with _on_device(q):
        return _launch(q, k_cache, v_cache, cache_lens, scale, max_len, num_splits)
