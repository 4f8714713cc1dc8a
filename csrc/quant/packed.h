// Packed weight-only linear layers: y = (x · Wᵀ) · scale + bias, with W stored in int8, bfloat16 or float32.
//
// Layout. A weight (N, K) is packed into blocks of 64 output channels, each stored k-major: block b holds
// W[b*64 + j, k] at P[(b*K + k)*64 + j]. A one-token step then reads every weight byte once, front to back (one
// cache line of int8 per k), and 64 outputs accumulate in registers with no horizontal sum at the end. N is padded
// to a whole block with zero rows (scale 0). `scale` has one float per (padded) output channel: int8's symmetric
// per-channel scale, or 1 for bfloat16 and float32, whose values need none. float32 is the layout alone, no rounding:
// a batched decode step multiplies a few rows by every weight, and this layout's 3-row tiles reach the FMA units'
// speed where a general GEMM packs the weight again on every call.
//
// The kernels dequantise in registers: int8 → int32 → float (or bfloat16 bits shifted into a float) and a fused
// multiply-add with the float32 activations; the scale is applied once per output after the sum. Activations stay
// float32, so int8 costs only the weights' rounding.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gpt2tui::quant {

constexpr int kBlock = 64;  // output channels per packed block

enum class WeightType : int { Int8 = 0, BFloat16 = 1, Float32 = 2 };

struct LinearArgs {
    const float* x;       // (M, K) row-major
    const void* w;        // packed (NB, K, 64)
    const float* scale;   // (NB * 64,)
    const float* bias;    // (N,) or null
    float* y;             // (M, N) row-major
    int64_t M, N, K;
    WeightType type;
};

// One unit of work: output block `b`, rows [m0, m1).
using BlockFn = void (*)(const LinearArgs&, int64_t b, int64_t m0, int64_t m1);

// The greedy head's unit of work: output block `b`, rows [m0, m1), folded into a running maximum per row instead of
// stored: where an output beats best_val[m] (strictly, so the first of equal outputs stays), best_val[m] and
// best_idx[m] take it. Blocks folded in increasing order therefore leave the first index of the row's maximum, as
// torch.argmax does. With NaN among a row's outputs its index is unspecified (torch.argmax would pick the NaN).
// `a.y` is not touched.
using ArgmaxFn = void (*)(const LinearArgs&, int64_t b, int64_t m0, int64_t m1, float* best_val, int64_t* best_idx);

// The block function for an instruction set: "avx512", "avx2" (with FMA) or "portable" C++, or "auto", the best
// this CPU runs. Null when the CPU lacks the one asked for. `isa_name` is told which was chosen.
BlockFn pick_block_fn(WeightType type, const char* isa, const char** isa_name);
ArgmaxFn pick_argmax_fn(WeightType type, const char* isa);

// Whether this CPU runs an instruction set's path ("avx512", "avx2", "portable").
bool cpu_supports(const char* isa);

// Rows of the packed matrix as float32 (an embedding lookup in the tied token embedding): out[i, :] = W[ids[i], :].
void gather_rows(const void* w, WeightType type, const float* scale, int64_t K, const int64_t* ids, int64_t n,
                 float* out);

}  // namespace gpt2tui::quant
