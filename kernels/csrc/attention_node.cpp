// The fused causal attention's autograd node in C++: from a step's second call of a shape on, its forward and its
// backward launch the compiled Triton kernels with no Python between them.
//
// Why: on a GPU machine whose host is slow, a lone forward+backward waits for its host, and a Python
// `autograd.Function` costs that host ~18 µs more per round trip than a C++ node, before any of our own Python
// (benchmarks/RESULTS.md, "Host side" runs). PyTorch's SDPA is all C++.
//
// What is here is only the mechanism; all policy stays in kernels/attention.py, which remains the path of every first
// call, of anything unusual, and the twin this one is tested against. Python compiles and tunes the kernels, makes a
// launch plan per call shape, and hands this file each plan: the buffers' layouts and, per launch, the compiled
// kernel's handle, grid, block and every parameter's bytes but those of the tensors and the dropout seed, which each
// call supplies (kernels/native.py). A call whose shape has no plan here returns None, and Python runs it.
//
// Built without CUDA's headers or libraries (it must build wherever torch does, CI's CPU machines included): the driver
// API's few functions are declared below and looked up in libcuda at the first launch, and the current stream comes
// from torch's device-generic guard. Tests on the CPU hand it a recording function in place of cuLaunchKernel.

#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <dlfcn.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

// cuda.h's signatures, spelled out: CUresult is an int-sized enum, handles are pointers, CUdevice is an int.
using LaunchKernelFn = int (*)(void* function, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                               unsigned block_y, unsigned block_z, unsigned shared_bytes, void* stream, void** params,
                               void** extra);
using CtxGetCurrentFn = int (*)(void** context);
using CtxSetCurrentFn = int (*)(void* context);
using DeviceGetFn = int (*)(int* device, int ordinal);
using PrimaryCtxRetainFn = int (*)(void** context, int device);

struct Driver {
  LaunchKernelFn launch = nullptr;
  CtxGetCurrentFn ctx_get_current = nullptr;
  CtxSetCurrentFn ctx_set_current = nullptr;
  DeviceGetFn device_get = nullptr;
  PrimaryCtxRetainFn primary_ctx_retain = nullptr;
};

LaunchKernelFn g_fake_launch = nullptr;  // a test's recorder; launches on the CPU go only there

Driver load_driver() {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  TORCH_CHECK(lib != nullptr, "gpt2tui's attention node could not open libcuda.so.1: ", dlerror());
  auto find = [lib](const char* name) {
    void* symbol = dlsym(lib, name);
    TORCH_CHECK(symbol != nullptr, "gpt2tui's attention node found no ", name, " in libcuda.so.1");
    return symbol;
  };
  Driver d;
  d.ctx_get_current = reinterpret_cast<CtxGetCurrentFn>(find("cuCtxGetCurrent"));
  d.ctx_set_current = reinterpret_cast<CtxSetCurrentFn>(find("cuCtxSetCurrent"));
  d.device_get = reinterpret_cast<DeviceGetFn>(find("cuDeviceGet"));
  d.primary_ctx_retain = reinterpret_cast<PrimaryCtxRetainFn>(find("cuDevicePrimaryCtxRetain"));
  d.launch = reinterpret_cast<LaunchKernelFn>(find("cuLaunchKernel"));
  return d;
}

const Driver& driver() {
  static const Driver d = load_driver();  // once, thread-safely; a throw leaves it to the next call
  return d;
}

// The driver API launches into the calling thread's current context. Autograd runs CUDA backward on a thread of its
// own, where torch's runtime calls may not have made one current yet: make the device's primary context current, as
// Triton's own launcher does, and as the runtime would.
void ensure_context(const Driver& d, int device_index) {
  void* context = nullptr;
  TORCH_CHECK(d.ctx_get_current(&context) == 0, "cuCtxGetCurrent failed");
  if (context != nullptr) return;
  int device = 0;
  TORCH_CHECK(d.device_get(&device, device_index) == 0, "cuDeviceGet failed");
  TORCH_CHECK(d.primary_ctx_retain(&context, device) == 0, "cuDevicePrimaryCtxRetain failed");
  TORCH_CHECK(d.ctx_set_current(context) == 0, "cuCtxSetCurrent failed");
}

// Where a launch's parameter comes from. Its bytes are fixed by the plan (strides, T, scales: kFixed), or they are
// one of the call's tensors' addresses, or the dropout seed.
enum Source : int8_t { kQ, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kSeed, kSources, kFixed = -1 };

struct Launch {
  void* function = nullptr;  // the compiled kernel's CUfunction
  std::array<unsigned, 3> grid{};
  unsigned block = 0;  // threads: 32 per warp
  unsigned shared_bytes = 0;
  std::vector<uint64_t> fixed;  // every parameter's bytes, little-endian in 8; the call's own filled in per launch
  std::vector<std::pair<int, int8_t>> from_call;  // (parameter index, Source)

  void operator()(const std::array<uint64_t, kSources>& values, void* stream, const at::Device& device) const {
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return;  // no work (T = 0, say): Triton's launcher skips it too
    // 64 parameters fit every kernel in kernels/attention.py; more is refused when the plan is registered.
    std::array<uint64_t, 64> storage;
    std::array<void*, 65> params;
    const size_t n = fixed.size();
    std::memcpy(storage.data(), fixed.data(), n * sizeof(uint64_t));
    for (const auto& [index, source] : from_call) storage[index] = values[source];
    for (size_t i = 0; i < n; ++i) params[i] = &storage[i];
    params[n] = nullptr;  // the driver reads as many as the kernel declares; a test's recorder stops here
    int status;
    if (g_fake_launch != nullptr) {
      status = g_fake_launch(function, grid[0], grid[1], grid[2], block, 1, 1, shared_bytes, stream, params.data(),
                             nullptr);
    } else {
      TORCH_CHECK(device.is_cuda(), "gpt2tui's attention node launches on CUDA tensors only");
      const Driver& d = driver();
      ensure_context(d, device.index());
      status = d.launch(function, grid[0], grid[1], grid[2], block, 1, 1, shared_bytes, stream, params.data(),
                        nullptr);
    }
    TORCH_CHECK(status == 0, "cuLaunchKernel failed with CUDA error ", status, " in gpt2tui's attention node");
  }
};

struct Layout {
  std::vector<int64_t> sizes, strides;
};

// One call shape's plan: its key, the buffers it allocates, and its launches: the forward's, and the backward's two
// once Python has planned a backward of this shape (until then the node runs only calls that need no gradient).
struct Plan {
  std::vector<int64_t> key;
  Layout out, grads;  // the output, and each gradient: q's memory order
  int64_t stats_numel = 0;  // the log-sum-exp and Δ, float32, flat
  Launch forward, dq, dkdv;
  bool backward = false;
};

double g_fill_value = 0.0;
bool g_fill = false;  // tests: every buffer starts poisoned, to prove the kernels write every element

at::Tensor allocate(const Layout& layout, const at::TensorOptions& options) {
  at::Tensor t = at::empty_strided(layout.sizes, layout.strides, options);
  if (g_fill) t.fill_(g_fill_value);
  return t;
}

at::Tensor allocate_stats(int64_t numel, const at::Device& device) {
  at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(at::kFloat).device(device));
  if (g_fill) t.fill_(g_fill_value);
  return t;
}

uint64_t address(const at::Tensor& t) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(t.data_ptr()));
}

void* current_stream(const at::Device& device) {
  if (!device.is_cuda()) return nullptr;  // a test's CPU tensors: the recorder takes no stream
  const auto* impl = c10::impl::getDeviceGuardImpl(device.type());
  return impl->getStreamNativeHandle(impl->getStream(device));
}

// The key a call looks its plan up by; Python builds the same one when it registers (kernels/native.py).
std::vector<int64_t> key_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                            double dropout_p, int64_t seed_width) {
  std::vector<int64_t> key;
  key.reserve(24);
  for (int64_t s : q.sizes()) key.push_back(s);
  for (const at::Tensor* t : {&q, &k, &v})
    for (int64_t s : t->strides()) key.push_back(s);
  key.push_back(static_cast<int64_t>(q.scalar_type()));
  key.push_back(static_cast<int64_t>(q.device().type()));
  key.push_back(q.device().index());
  int64_t bits;
  std::memcpy(&bits, &scale, sizeof bits);
  key.push_back(bits);
  std::memcpy(&bits, &dropout_p, sizeof bits);
  key.push_back(bits);
  key.push_back(seed_width);
  return key;
}

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& key) const {
    size_t h = 0xcbf29ce484222325ull;
    for (int64_t x : key) h = (h ^ static_cast<size_t>(x)) * 0x100000001b3ull;
    return h;
  }
};

// Plans are never freed: a node made from one may run its backward long after, and a run has few shapes. Past
// kMaxPlans new shapes simply stay on the Python path.
constexpr size_t kMaxPlans = 256;
std::mutex g_plans_mutex;
std::deque<Plan> g_plan_store;
std::unordered_map<std::vector<int64_t>, const Plan*, KeyHash> g_plans;

const Plan* find_plan(const std::vector<int64_t>& key) {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  auto it = g_plans.find(key);
  return it == g_plans.end() ? nullptr : it->second;
}

int seed_width(int64_t seed) {  // Triton's integer type for an unspecialized int: i32 (0) or i64 (1)
  return (seed >= INT32_MIN && seed <= INT32_MAX) ? 0 : 1;
}

bool aligned(std::initializer_list<const at::Tensor*> tensors) {
  uintptr_t bits = 0;
  for (const at::Tensor* t : tensors) bits |= reinterpret_cast<uintptr_t>(t->data_ptr());
  return bits % 16 == 0;
}

// The values every launch of a step takes from the call: the forward's tensors and the seed (the backward adds its own).
std::array<uint64_t, kSources> step_values(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& o, const at::Tensor& stats, int64_t seed) {
  std::array<uint64_t, kSources> values{};
  values[kQ] = address(q);
  values[kK] = address(k);
  values[kV] = address(v);
  values[kO] = address(o);
  values[kStats] = address(stats);
  values[kSeed] = static_cast<uint64_t>(seed);
  return values;
}

// The forward's launch: returns the output and the statistics buffer (log-sum-exp, room for Δ).
std::pair<at::Tensor, at::Tensor> run_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const Plan* plan, int64_t seed) {
  const at::Device device = q.device();
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  at::Tensor o = allocate(plan->out, q.options());
  at::Tensor stats = allocate_stats(plan->stats_numel, device);
  plan->forward(step_values(q, k, v, o, stats, seed), current_stream(device), device);
  return {o, stats};
}

struct FlashAttention : public torch::autograd::Function<FlashAttention> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const Plan* plan, int64_t seed) {
    auto [o, stats] = run_forward(q, k, v, plan, seed);
    ctx->save_for_backward({q, k, v, o, stats});
    ctx->saved_data["plan"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(plan));
    ctx->saved_data["seed"] = seed;
    return o;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto* plan = reinterpret_cast<const Plan*>(static_cast<intptr_t>(ctx->saved_data["plan"].toInt()));
    const int64_t seed = ctx->saved_data["seed"].toInt();
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &o = saved[3], &stats = saved[4];
    at::Tensor d_o = grads[0];
    const at::Device device = q.device();
    c10::OptionalDeviceGuard guard;
    if (device.is_cuda()) guard.reset_device(device);
    // The kernels were compiled for dO laid out as O (as a model's views hand it back) and 16-byte aligned; any
    // other gradient is copied into that layout first.
    if (d_o.strides() != o.strides() || !aligned({&d_o})) {
      at::Tensor copy = at::empty_strided(o.sizes(), o.strides(), o.options());
      copy.copy_(d_o);
      d_o = copy;
    }
    std::array<uint64_t, kSources> values = step_values(q, k, v, o, stats, seed);
    values[kDO] = address(d_o);
    void* stream = current_stream(device);
    // dQ first, before dK and dV are allocated: it also writes Δ, which the dK/dV kernel reads, and on a slow host the
    // GPU waits for this first launch.
    at::Tensor dq = allocate(plan->grads, q.options());
    values[kDQ] = address(dq);
    plan->dq(values, stream, device);
    at::Tensor dk = allocate(plan->grads, q.options());
    at::Tensor dv = allocate(plan->grads, q.options());
    values[kDK] = address(dk);
    values[kDV] = address(dv);
    plan->dkdv(values, stream, device);
    return {dq, dk, dv, at::Tensor(), at::Tensor()};
  }
};

// The attention of q, k, v through a registered plan, or None where this call shape has none (or a tensor is not
// 16-byte aligned, as the kernels were compiled to assume): the caller then runs the Python path.
py::object attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double dropout_p, double scale,
                     int64_t seed) {
  const Plan* plan = find_plan(key_of(q, k, v, scale, dropout_p, seed_width(seed)));
  if (plan == nullptr || !aligned({&q, &k, &v})) return py::none();
  // Forward-mode AD (dual tensors): the node has no JVP; Python's Function says so.
  if (q._fw_grad(0).defined() || k._fw_grad(0).defined() || v._fw_grad(0).defined()) return py::none();
  const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (grad && !plan->backward) return py::none();
  if (grad) return py::cast(FlashAttention::apply(q, k, v, plan, seed));
  // No gradient wanted (inference, a prefill): the forward's launch alone, without autograd's bookkeeping.
  return py::cast(run_forward(q, k, v, plan, seed).first);
}

Launch make_launch(py::tuple spec) {
  // (function, (grid x, y, z), threads, shared bytes, [fixed bytes per parameter], [(parameter index, source)])
  Launch launch;
  launch.function = reinterpret_cast<void*>(static_cast<uintptr_t>(spec[0].cast<uint64_t>()));
  auto grid = spec[1].cast<std::vector<unsigned>>();
  TORCH_CHECK(grid.size() == 3, "a launch's grid has three dimensions");
  std::copy(grid.begin(), grid.end(), launch.grid.begin());
  launch.block = spec[2].cast<unsigned>();
  launch.shared_bytes = spec[3].cast<unsigned>();
  launch.fixed = spec[4].cast<std::vector<uint64_t>>();
  TORCH_CHECK(launch.fixed.size() <= 64, "a kernel of more than 64 parameters");
  for (auto [index, source] : spec[5].cast<std::vector<std::pair<int, int>>>()) {
    TORCH_CHECK(index >= 0 && static_cast<size_t>(index) < launch.fixed.size() && source >= 0 && source < kSources,
                "a launch's parameter index or source is out of range");
    launch.from_call.emplace_back(index, static_cast<int8_t>(source));
  }
  return launch;
}

Layout make_layout(py::tuple spec) {
  return {spec[0].cast<std::vector<int64_t>>(), spec[1].cast<std::vector<int64_t>>()};
}

// Registers a plan under the key `key_of` would build for its calls; `grads`, `dq` and `dkdv` are None for a forward
// alone. A plan with a backward replaces one without (the old one stays in the store: a call may be using it).
// Returns whether the key now has a plan.
bool register_plan(std::vector<int64_t> key, py::tuple out, py::object grads, int64_t stats_numel, py::tuple forward,
                   py::object dq, py::object dkdv) {
  Plan plan;
  plan.key = key;
  plan.out = make_layout(out);
  plan.stats_numel = stats_numel;
  plan.forward = make_launch(forward);
  plan.backward = !grads.is_none();
  if (plan.backward) {
    plan.grads = make_layout(grads.cast<py::tuple>());
    plan.dq = make_launch(dq.cast<py::tuple>());
    plan.dkdv = make_launch(dkdv.cast<py::tuple>());
  }
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  auto it = g_plans.find(key);
  if (it != g_plans.end() && (it->second->backward || !plan.backward)) return true;
  if (it == g_plans.end() && g_plans.size() >= kMaxPlans) return false;
  g_plan_store.push_back(std::move(plan));
  g_plans[std::move(key)] = &g_plan_store.back();
  return true;
}

size_t plan_count() {
  std::lock_guard<std::mutex> lock(g_plans_mutex);
  return g_plans.size();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gpt2tui's causal attention as a C++ autograd node over compiled Triton kernels (kernels/native.py)";
  m.def("attention", &attention, "The attention through a registered plan, or None", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("dropout_p"), py::arg("scale"), py::arg("seed"));
  m.def("key", [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double dropout_p, double scale,
                  int64_t seed) { return key_of(q, k, v, scale, dropout_p, seed_width(seed)); },
        "The key a call looks its plan up by");
  m.def("register_plan", &register_plan, "Registers one call shape's plan (its backward's parts None: forward alone)");
  m.def("plan_count", &plan_count);
  m.def("set_fake_launch", [](uint64_t address) {
    g_fake_launch = reinterpret_cast<LaunchKernelFn>(static_cast<uintptr_t>(address));
  }, "Tests: launches go to this function, cuLaunchKernel's signature, instead of the driver (0: the driver)");
  m.def("set_fill", [](bool on, double value) {
    g_fill = on;
    g_fill_value = value;
  }, "Tests: fill every buffer the node allocates with `value` before the kernels write it");
}
