// gpt2tui._quant: the pybind11 face of the packed linear. It takes tensors as addresses and sizes (gpt2tui/quant.py
// checks dtypes, shapes, contiguity and devices before any call), so it builds without torch and works with any
// torch version. Every call releases the GIL for the product.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "packed.h"
#include "pool.h"

namespace py = pybind11;
using namespace gpt2tui::quant;

namespace {

// Rows per task: enough that a task reuses its weight block across rows from the cache, few enough that a prompt's
// prefill still splits into many tasks.
constexpr int64_t kRowsPerTask = 32;
// Blocks per task of the greedy head: each task keeps a running best per row over its blocks, and the tasks' bests are
// folded in order at the end; a few hundred tasks over the 50257-row head let idle threads share it.
constexpr int64_t kBlocksPerTask = 8;

WeightType weight_type(int code) {
    if (code != int(WeightType::Int8) && code != int(WeightType::BFloat16) && code != int(WeightType::Float32))
        throw std::invalid_argument("unknown packed weight type " + std::to_string(code));
    return WeightType(code);
}

template <typename T>
T* ptr(uintptr_t address) {
    return reinterpret_cast<T*>(address);
}

void linear(uintptr_t x, uintptr_t w, uintptr_t scale, uintptr_t bias, uintptr_t y, int64_t M, int64_t N, int64_t K,
            int type_code, const std::string& isa) {
    if (M < 0 || N <= 0 || K <= 0) throw std::invalid_argument("linear: sizes must be positive");
    const WeightType type = weight_type(type_code);
    const LinearArgs args{ptr<const float>(x), ptr<const void>(w), ptr<const float>(scale),
                          bias ? ptr<const float>(bias) : nullptr, ptr<float>(y), M, N, K, type};
    const BlockFn fn = pick_block_fn(type, isa.c_str(), nullptr);
    if (fn == nullptr) throw std::invalid_argument("linear: this CPU does not run the " + isa + " path");
    const int64_t blocks = (N + kBlock - 1) / kBlock;
    const int64_t chunks = (M + kRowsPerTask - 1) / kRowsPerTask;
    py::gil_scoped_release release;
    Pool::instance().run(blocks * chunks, [&](int64_t t) {
        const int64_t b = t / chunks, c = t % chunks;
        const int64_t m0 = c * kRowsPerTask, m1 = std::min(M, m0 + kRowsPerTask);
        fn(args, b, m0, m1);
    });
}

void argmax(uintptr_t x, uintptr_t w, uintptr_t scale, uintptr_t bias, uintptr_t out, int64_t M, int64_t N, int64_t K,
            int type_code, const std::string& isa) {
    if (M < 0 || N <= 0 || K <= 0) throw std::invalid_argument("argmax: sizes must be positive");
    const WeightType type = weight_type(type_code);
    const LinearArgs args{ptr<const float>(x), ptr<const void>(w), ptr<const float>(scale),
                          bias ? ptr<const float>(bias) : nullptr, nullptr, M, N, K, type};
    const ArgmaxFn fn = pick_argmax_fn(type, isa.c_str());
    if (fn == nullptr) throw std::invalid_argument("argmax: this CPU does not run the " + isa + " path");
    const int64_t blocks = (N + kBlock - 1) / kBlock;
    const int64_t groups = (blocks + kBlocksPerTask - 1) / kBlocksPerTask;
    const int64_t chunks = (M + kRowsPerTask - 1) / kRowsPerTask;
    // Index 0 where nothing beats -inf: torch.argmax's answer for a row of -inf.
    std::vector<float> best_val(groups * M, -std::numeric_limits<float>::infinity());
    std::vector<int64_t> best_idx(groups * M, 0);
    int64_t* result = ptr<int64_t>(out);
    py::gil_scoped_release release;
    Pool::instance().run(groups * chunks, [&](int64_t t) {
        const int64_t g = t / chunks, c = t % chunks;
        const int64_t m0 = c * kRowsPerTask, m1 = std::min(M, m0 + kRowsPerTask);
        const int64_t b1 = std::min(blocks, (g + 1) * kBlocksPerTask);
        for (int64_t b = g * kBlocksPerTask; b < b1; ++b) fn(args, b, m0, m1, &best_val[g * M], &best_idx[g * M]);
    });
    for (int64_t m = 0; m < M; ++m) {
        float top = best_val[m];
        int64_t at = best_idx[m];
        for (int64_t g = 1; g < groups; ++g) {
            if (best_val[g * M + m] > top) {
                top = best_val[g * M + m];
                at = best_idx[g * M + m];
            }
        }
        result[m] = at;
    }
}

void gather(uintptr_t w, int type_code, uintptr_t scale, int64_t K, uintptr_t ids, int64_t n, uintptr_t out) {
    const WeightType type = weight_type(type_code);
    py::gil_scoped_release release;
    gather_rows(ptr<const void>(w), type, ptr<const float>(scale), K, ptr<const int64_t>(ids), n, ptr<float>(out));
}

std::string isa() {
    const char* name = "portable";
    pick_block_fn(WeightType::Int8, "auto", &name);
    return name;
}

}  // namespace

PYBIND11_MODULE(_quant, m) {
    m.doc() = "Packed int8/bfloat16/float32 weight-only linear layers (see gpt2tui/quant.py)";
    m.attr("BLOCK") = kBlock;
    m.attr("INT8") = int(WeightType::Int8);
    m.attr("BFLOAT16") = int(WeightType::BFloat16);
    m.attr("FLOAT32") = int(WeightType::Float32);
    m.def("linear", &linear, py::arg("x"), py::arg("w"), py::arg("scale"), py::arg("bias"), py::arg("y"),
          py::arg("M"), py::arg("N"), py::arg("K"), py::arg("type"), py::arg("isa") = "auto",
          "y (M, N) = x (M, K) · unpack(w)ᵀ · scale + bias, all float32 but the packed weights; addresses as ints");
    m.def("argmax", &argmax, py::arg("x"), py::arg("w"), py::arg("scale"), py::arg("bias"), py::arg("out"),
          py::arg("M"), py::arg("N"), py::arg("K"), py::arg("type"), py::arg("isa") = "auto",
          "out (M,) int64 = argmax over n of linear's y, without storing y: the first index of each row's maximum");
    m.def("gather", &gather, py::arg("w"), py::arg("type"), py::arg("scale"), py::arg("K"), py::arg("ids"),
          py::arg("n"), py::arg("out"), "out (n, K) = rows ids of the packed weight, dequantised");
    m.def("isa", &isa, "the instruction set the vector path uses on this CPU: avx512, avx2 or portable");
    m.def("cpu_supports", [](const std::string& name) { return cpu_supports(name.c_str()); }, py::arg("isa"));
    m.def("set_num_threads", [](int n) { Pool::instance().set_threads(n); }, py::arg("n"));
    m.def("get_num_threads", [] { return Pool::instance().threads(); });
}
