// The packed linear's block functions: one output block of 64 channels for a range of rows, per instruction set.
// Each vector path is compiled for its own target with a per-function attribute (the file itself builds for the
// baseline x86-64, never -march=native), and pick_block_fn chooses at run time from what the CPU reports.
#include <cstring>
#include <string>

#include "packed.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GPT2TUI_X86 1
#endif

namespace gpt2tui::quant {
namespace {

// Every sum runs in two levels, chunks of kChunk products added into the total: the rounding error grows with
// kChunk + K / kChunk instead of K, which keeps a 3072-long dot product as accurate as PyTorch's blocked GEMM.
constexpr int64_t kChunk = 32;

inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
}

template <WeightType T>
inline float load_weight(const void* w, int64_t i) {
    if constexpr (T == WeightType::Int8) {
        return float(static_cast<const int8_t*>(w)[i]);
    } else if constexpr (T == WeightType::BFloat16) {
        return bf16_to_float(static_cast<const uint16_t*>(w)[i]);
    } else {
        return static_cast<const float*>(w)[i];
    }
}

// The greedy head's fold of one row's outputs into its running best (see ArgmaxFn): strict, in increasing order.
inline void fold(const float* values, int64_t n, int64_t first, float& best_val, int64_t& best_idx) {
    for (int64_t j = 0; j < n; ++j) {
        if (values[j] > best_val) {
            best_val = values[j];
            best_idx = first + j;
        }
    }
}

// -- portable C++ ------------------------------------------------------------------------------------------------
// k-outer with 64 independent sums: compilers vectorise the inner loop for whatever baseline they target.
template <WeightType T, bool Argmax>
void rows_portable(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1, float* best_val, int64_t* best_idx) {
    const int64_t K = a.K, n0 = b * kBlock;
    const int64_t width = a.N - n0 < kBlock ? a.N - n0 : kBlock;
    for (int64_t m = m0; m < m1; ++m) {
        float acc[kBlock] = {};
        const float* x = a.x + m * a.K;
        for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
            float part[kBlock] = {};
            for (int64_t k = k0; k < K && k < k0 + kChunk; ++k) {
                const float xk = x[k];
                const int64_t base = (b * K + k) * kBlock;
                for (int j = 0; j < kBlock; ++j) part[j] += xk * load_weight<T>(a.w, base + j);
            }
            for (int j = 0; j < kBlock; ++j) acc[j] += part[j];
        }
        float out[kBlock];
        float* y = Argmax ? out : a.y + m * a.N + n0;
        for (int64_t j = 0; j < width; ++j) y[j] = acc[j] * a.scale[n0 + j] + (a.bias ? a.bias[n0 + j] : 0.0f);
        if constexpr (Argmax) fold(out, width, n0, best_val[m], best_idx[m]);
    }
}

template <WeightType T>
void block_portable(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1) {
    rows_portable<T, false>(a, b, m0, m1, nullptr, nullptr);
}

template <WeightType T>
void argmax_portable(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1, float* best_val, int64_t* best_idx) {
    rows_portable<T, true>(a, b, m0, m1, best_val, best_idx);
}

#ifdef GPT2TUI_X86
// -- AVX-512: 4 vectors of 16 outputs per block, up to 3 rows at once (12 accumulators and 12 partial sums) --------
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

template <WeightType T>
AVX512_TARGET inline __m512 load16(const void* w, int64_t i) {
    if constexpr (T == WeightType::Int8) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(w) + i));
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
    } else if constexpr (T == WeightType::BFloat16) {
        const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
    } else {
        return _mm512_loadu_ps(static_cast<const float*>(w) + i);
    }
}

template <WeightType T, int MT, bool Argmax>
AVX512_TARGET void tile_avx512(const LinearArgs& a, int64_t b, int64_t m, float* best_val, int64_t* best_idx) {
    const int64_t K = a.K, n0 = b * kBlock;
    __m512 acc[MT][4], part[MT][4];
#pragma GCC unroll 4
    for (int r = 0; r < MT; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
    const float* x = a.x + m * K;
    const int64_t base = b * K * kBlock;
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t k1 = k0 + kChunk < K ? k0 + kChunk : K;
#pragma GCC unroll 4
        for (int r = 0; r < MT; ++r)
            for (int j = 0; j < 4; ++j) part[r][j] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k1; ++k) {
            __m512 w[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) w[j] = load16<T>(a.w, base + k * kBlock + j * 16);
#pragma GCC unroll 4
            for (int r = 0; r < MT; ++r) {
                const __m512 xr = _mm512_set1_ps(x[r * K + k]);
#pragma GCC unroll 4
                for (int j = 0; j < 4; ++j) part[r][j] = _mm512_fmadd_ps(xr, w[j], part[r][j]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < MT; ++r)
            for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_add_ps(acc[r][j], part[r][j]);
    }
    if constexpr (!Argmax) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const int64_t n = n0 + j * 16, left = a.N - n;
            if (left <= 0) break;
            const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
            const __m512 s = _mm512_loadu_ps(a.scale + n);
            const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int r = 0; r < MT; ++r)
                _mm512_mask_storeu_ps(a.y + (m + r) * a.N + n, mask, _mm512_fmadd_ps(acc[r][j], s, bias));
        }
    } else {
        // The outputs stay in registers: a row's block maximum is one reduction, and only a block that beats the
        // row's best so far (rarely, after the first few) looks for where it is.
        const __m512 lowest = _mm512_set1_ps(-__builtin_inff());
        __m512 s[4], bias[4];
        __mmask16 mask[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const int64_t left = a.N - (n0 + j * 16);
            mask[j] = left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
            s[j] = _mm512_loadu_ps(a.scale + n0 + j * 16);  // the scale is padded to whole blocks
            bias[j] = a.bias ? _mm512_maskz_loadu_ps(mask[j], a.bias + n0 + j * 16) : _mm512_setzero_ps();
        }
#pragma GCC unroll 4
        for (int r = 0; r < MT; ++r) {
            __m512 v[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) v[j] = _mm512_mask_blend_ps(mask[j], lowest, _mm512_fmadd_ps(acc[r][j], s[j], bias[j]));
            const float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(v[0], v[1]), _mm512_max_ps(v[2], v[3])));
            if (top > best_val[m + r]) {
                const __m512 t = _mm512_set1_ps(top);
                for (int j = 0; j < 4; ++j) {
                    const __mmask16 hit = _mm512_cmp_ps_mask(v[j], t, _CMP_EQ_OQ);
                    if (hit) {
                        best_val[m + r] = top;
                        best_idx[m + r] = n0 + j * 16 + __builtin_ctz(hit);
                        break;
                    }
                }
            }
        }
    }
}

template <WeightType T, bool Argmax>
AVX512_TARGET void rows_avx512(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1, float* bv, int64_t* bi) {
    int64_t m = m0;
    for (; m + 3 <= m1; m += 3) tile_avx512<T, 3, Argmax>(a, b, m, bv, bi);
    switch (m1 - m) {
        case 2: tile_avx512<T, 2, Argmax>(a, b, m, bv, bi); break;
        case 1: tile_avx512<T, 1, Argmax>(a, b, m, bv, bi); break;
        default: break;
    }
}

template <WeightType T>
AVX512_TARGET void block_avx512(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1) {
    rows_avx512<T, false>(a, b, m0, m1, nullptr, nullptr);
}

template <WeightType T>
AVX512_TARGET void argmax_avx512(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1, float* bv, int64_t* bi) {
    rows_avx512<T, true>(a, b, m0, m1, bv, bi);
}

// -- AVX2 + FMA: 16 registers, so each block runs as two halves of 32 outputs, a row at a time ------------------
#define AVX2_TARGET __attribute__((target("avx2,fma")))

template <WeightType T>
AVX2_TARGET inline __m256 load8(const void* w, int64_t i) {
    if constexpr (T == WeightType::Int8) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(w) + i));
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    } else if constexpr (T == WeightType::BFloat16) {
        const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
    } else {
        return _mm256_loadu_ps(static_cast<const float*>(w) + i);
    }
}

template <WeightType T, bool Argmax>
AVX2_TARGET void tile_avx2(const LinearArgs& a, int64_t b, int64_t m, int half, float* best_val, int64_t* best_idx) {
    const int64_t K = a.K, n0 = b * kBlock + half * 32;
    if (n0 >= a.N) return;
    __m256 acc[4], part[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[j] = _mm256_setzero_ps();
    const float* x = a.x + m * K;
    const int64_t base = b * K * kBlock + half * 32;
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        const int64_t k1 = k0 + kChunk < K ? k0 + kChunk : K;
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) part[j] = _mm256_setzero_ps();
        for (int64_t k = k0; k < k1; ++k) {
            const __m256 xk = _mm256_set1_ps(x[k]);
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) part[j] = _mm256_fmadd_ps(xk, load8<T>(a.w, base + k * kBlock + j * 8), part[j]);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) acc[j] = _mm256_add_ps(acc[j], part[j]);
    }
    float out[32];  // the greedy head's outputs of this half block, folded at the end
    int64_t width = 0;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + j * 8, left = a.N - n;
        if (left <= 0) break;
        const __m256 s = _mm256_loadu_ps(a.scale + n);
        float* y = Argmax ? out + j * 8 : a.y + m * a.N + n;
        width += left >= 8 ? 8 : left;
        if (left >= 8) {
            __m256 v = _mm256_mul_ps(acc[j], s);
            if (a.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(a.bias + n));
            _mm256_storeu_ps(y, v);
        } else {  // the last block's tail: past N the scale is 0 and there is no bias or output to touch
            float v[8];
            _mm256_storeu_ps(v, _mm256_mul_ps(acc[j], s));
            for (int64_t i = 0; i < left; ++i) y[i] = v[i] + (a.bias ? a.bias[n + i] : 0.0f);
        }
    }
    if constexpr (Argmax) fold(out, width, n0, best_val[m], best_idx[m]);
}

template <WeightType T>
AVX2_TARGET void block_avx2(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
        for (int half = 0; half < 2; ++half) tile_avx2<T, false>(a, b, m, half, nullptr, nullptr);
}

template <WeightType T>
AVX2_TARGET void argmax_avx2(const LinearArgs& a, int64_t b, int64_t m0, int64_t m1, float* bv, int64_t* bi) {
    for (int64_t m = m0; m < m1; ++m)
        for (int half = 0; half < 2; ++half) tile_avx2<T, true>(a, b, m, half, bv, bi);
}
#endif  // GPT2TUI_X86

}  // namespace

bool cpu_supports(const char* isa) {
    const std::string name(isa);
    if (name == "portable") return true;
#ifdef GPT2TUI_X86
    __builtin_cpu_init();
    if (name == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
    if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return false;
}

namespace {

// The best instruction set the CPU runs among those asked for ("auto": any), or null.
const char* pick_isa(const char* isa) {
    const std::string asked(isa);
    for (const char* name : {"avx512", "avx2", "portable"})
        if ((asked == "auto" || asked == name) && cpu_supports(name)) return name;
    return nullptr;
}

template <WeightType T>
BlockFn block_for(const std::string& isa) {
#ifdef GPT2TUI_X86
    if (isa == "avx512") return block_avx512<T>;
    if (isa == "avx2") return block_avx2<T>;
#endif
    return block_portable<T>;
}

template <WeightType T>
ArgmaxFn argmax_for(const std::string& isa) {
#ifdef GPT2TUI_X86
    if (isa == "avx512") return argmax_avx512<T>;
    if (isa == "avx2") return argmax_avx2<T>;
#endif
    return argmax_portable<T>;
}

}  // namespace

BlockFn pick_block_fn(WeightType type, const char* isa, const char** isa_name) {
    const char* name = pick_isa(isa);
    if (name == nullptr) return nullptr;
    if (isa_name) *isa_name = name;
    switch (type) {
        case WeightType::Int8: return block_for<WeightType::Int8>(name);
        case WeightType::BFloat16: return block_for<WeightType::BFloat16>(name);
        default: return block_for<WeightType::Float32>(name);
    }
}

ArgmaxFn pick_argmax_fn(WeightType type, const char* isa) {
    const char* name = pick_isa(isa);
    if (name == nullptr) return nullptr;
    switch (type) {
        case WeightType::Int8: return argmax_for<WeightType::Int8>(name);
        case WeightType::BFloat16: return argmax_for<WeightType::BFloat16>(name);
        default: return argmax_for<WeightType::Float32>(name);
    }
}

void gather_rows(const void* w, WeightType type, const float* scale, int64_t K, const int64_t* ids, int64_t n,
                 float* out) {
    for (int64_t i = 0; i < n; ++i) {
        const int64_t b = ids[i] / kBlock, j = ids[i] % kBlock;
        const float s = scale[ids[i]];
        float* row = out + i * K;
        const int64_t base = b * K * kBlock + j;
        if (type == WeightType::Int8) {
            for (int64_t k = 0; k < K; ++k) row[k] = load_weight<WeightType::Int8>(w, base + k * kBlock) * s;
        } else if (type == WeightType::BFloat16) {
            for (int64_t k = 0; k < K; ++k) row[k] = load_weight<WeightType::BFloat16>(w, base + k * kBlock) * s;
        } else {
            for (int64_t k = 0; k < K; ++k) row[k] = load_weight<WeightType::Float32>(w, base + k * kBlock) * s;
        }
    }
}

}  // namespace gpt2tui::quant
