"""The C++ attention node (kernels/native.py, kernels/csrc/attention_node.cpp) launches exactly what the Python path
launches, and takes a call only where it has that call shape's plan.

Without a GPU: a subprocess compiles the real kernels for sm_90 behind the stand-in driver (`standin_driver.py`),
builds the node, and hands it a recorder in place of cuLaunchKernel. A step through Python records what Triton's
launcher was given; the same step through the node records the parameters it packed; they must agree parameter for
parameter, each read back at its kernel's type. On CUDA the node runs for real, against the Python path and the
float64 reference.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from gpt2tui_testkit import child_env  # noqa: E402
from gpt2tui_testkit.standin_driver import run_report  # noqa: E402  (it imports Triton)

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import ctypes, json, os, struct, sys
from gpt2tui_testkit.standin_driver import RecordingLauncher, install
install()
import torch
from gpt2tui.kernels import attention as A, native

node = native.load()
assert node is not None, native.failure
report = {}
launches = []

def types_of(name):
    tuner = {"_attn_fwd_kernel": A._attn_fwd, "_attn_bwd_dq_kernel": A._attn_bwd_dq,
             "_attn_bwd_dkdv_kernel": A._attn_bwd_dkdv}[name]
    (compiled, _), = [c for c in A._LAUNCHERS[tuner].compiled.values() if c[0].function == function_of[name]][:1]
    return [t for t in compiled.src.signature.values() if t != "constexpr"]

FAKE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                        ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                        ctypes.c_void_p)

def fake(function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
    # Read each parameter at its storage's full 8 bytes; decoded by type below, once the kernel is known.
    raw = []
    while params[len(raw)] is not None:  # the node ends the array with a null
        raw.append(ctypes.cast(params[len(raw)], ctypes.POINTER(ctypes.c_uint64)).contents.value)
    launches.append({"function": function, "grid": [gx, gy, gz], "block": [bx, by, bz], "shared": shared,
                     "stream": stream or 0, "raw": raw, "extra": extra})
    return 0

callback = FAKE(fake)
native.record_launches(ctypes.cast(callback, ctypes.c_void_p).value)

def decode(ty, raw):
    low = raw & 0xFFFFFFFF
    if ty.startswith("*"):
        return ["ptr", raw]
    if ty == "i32":
        return struct.unpack("<i", struct.pack("<I", low))[0]
    if ty == "i64":
        return struct.unpack("<q", struct.pack("<Q", raw))[0]
    if ty == "fp32":
        return struct.unpack("<f", struct.pack("<I", low))[0]
    return ["?", ty, raw]

def python_args(args):
    # The recorder's (grid x, y, z, stream, function, packed metadata, ..., *kernel arguments): the non-constexpr
    # arguments at their kernel types, tensors as addresses.
    out = []
    for a in args[9:]:
        if isinstance(a, torch.Tensor):
            out.append(["ptr", a.data_ptr()])
        elif isinstance(a, float):
            out.append(struct.unpack("<f", struct.pack("<f", a))[0])
        elif isinstance(a, int):
            out.append(a)
    return out

torch.manual_seed(0)
q, k, v = (torch.randn(2, 3, 45, 32, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn(2, 3, 45, 32, dtype=torch.bfloat16)
names = ["_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"]
for dropout, seed in ((0.0, None), (0.1, 77)):
    report[f"before-{dropout}"] = node.attention(q, k, v, dropout, 32 ** -0.5, seed or 0) is None
    # The first call tunes, the second compiles and makes plans, the third runs from them and offers them to the node.
    for _ in range(3):
        torch.autograd.grad(A.causal_attention(q, k, v, dropout_p=dropout, seed=seed), (q, k, v), do)
    python = RecordingLauncher.launches[-3:]
    RecordingLauncher.launches.clear()
    function_of = {}
    out = A.causal_attention(q, k, v, dropout_p=dropout, seed=seed)
    grads = torch.autograd.grad(out, (q, k, v), do)
    report[f"node-{dropout}"] = {
        "python_launches_after": len(RecordingLauncher.launches),
        "node_launches": len(launches),
        "grad_fn": type(out.grad_fn).__name__,
    }
    per_kernel = []
    for name, (pname, pargs), launch in zip(names, python, launches):
        function_of[name] = pargs[4]
        types = types_of(name)
        ours = [decode(t, r) for t, r in zip(types, launch["raw"])]
        per_kernel.append({
            "name": pname == name,
            "function": launch["function"] == pargs[4],  # the stand-in hands each compiled kernel its own handle
            "grid": launch["grid"] == list(pargs[:3]),
            "block": launch["block"] == [32 * pargs[5][0], 1, 1],
            "shared": launch["shared"] == pargs[5][2],
            "stream": launch["stream"] == pargs[3],
            "extra": launch["extra"],
            "scratch": launch["raw"][len(types):len(types) + 2],
            # Every argument but the buffers the step allocates itself (O, stats, dQ, dK, dV) must be equal.
            "plain": [(i, x, y) for i, (x, y) in enumerate(zip(python_args(pargs), ours))
                      if x != y and not (isinstance(x, list) and x[0] == "ptr")],
            "ptrs": [y[1] for y in ours if isinstance(y, list) and y[0] == "ptr"],
        })
    fwd, dq_, dkdv = (p["ptrs"] for p in per_kernel)
    report[f"kernels-{dropout}"] = [{k: v for k, v in p.items() if k != "ptrs"} for p in per_kernel]
    report[f"wiring-{dropout}"] = {
        "inputs": [fwd[:3], dq_[:3], dkdv[:3]] == [[t.data_ptr() for t in (q, k, v)]] * 3,
        "out": fwd[3] == out.data_ptr() == dq_[3],
        "stats": fwd[4] == dq_[5] == dkdv[4],
        "do": dq_[4] == dkdv[3] == do.data_ptr(),
        "grads": [dq_[6], dkdv[5], dkdv[6]] == [g.data_ptr() for g in grads],
    }
    launches.clear()

# A dO laid out otherwise is copied into the output's layout for the kernels, which were compiled for that one.
do_t = torch.randn(2, 3, 32, 45, dtype=torch.bfloat16).transpose(2, 3)
torch.autograd.grad(A.causal_attention(q, k, v), (q, k, v), do_t)
# dQ's DO is its 5th parameter, dK/dV's its 4th: both get the one copy.
report["transposed_do"] = {"launches": len(launches), "copied": launches[1]["raw"][4] != do_t.data_ptr(),
                           "shared": launches[2]["raw"][3] == launches[1]["raw"][4]}
launches.clear()

# No work (T = 0): the node launches nothing, as Triton's launcher would not.
q0, k0, v0 = (torch.randn(1, 2, 0, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
for _ in range(4):
    torch.autograd.grad(A.causal_attention(q0, k0, v0), (q0, k0, v0), torch.ones_like(q0))
report["empty"] = {"node_launches": len(launches), "grad_fn": type(A.causal_attention(q0, k0, v0).grad_fn).__name__}
RecordingLauncher.launches.clear()
launches.clear()

# A seed past int64 (Triton's u64) and forward-mode AD (dual tensors) stay in Python, which runs the first and refuses
# the second, as without the node.
for _ in range(4):
    torch.autograd.grad(A.causal_attention(q, k, v, dropout_p=0.1, seed=2**63 + 5), (q, k, v), do)
report["huge_seed"] = {"node": len(launches), "python": len(RecordingLauncher.launches) // 4}
RecordingLauncher.launches.clear()
import torch.autograd.forward_ad as fwAD
with fwAD.dual_level(), torch.no_grad():
    try:
        A.causal_attention(fwAD.make_dual(q.detach(), torch.ones_like(q)), k.detach(), v.detach())
        report["dual"] = "ran"
    except NotImplementedError as err:
        report["dual"] = "refused: jvp" if "jvp" in str(err) else str(err)
report["dual_node"] = len(launches)
RecordingLauncher.launches.clear()

# Another shape has no plan yet: Python runs it.
q2, k2, v2 = (torch.randn(1, 2, 20, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
torch.autograd.grad(A.causal_attention(q2, k2, v2), (q2, k2, v2), torch.ones_like(q2))
report["other_shape"] = {"node": len(launches), "python": len(RecordingLauncher.launches)}
RecordingLauncher.launches.clear()

# A shape only ever run without gradients: once Python has run it from its plan, the node runs it, one launch and no
# autograd node; the same shape wanting gradients has no backward plan yet, and runs in Python.
q3, k3, v3 = (torch.randn(1, 2, 24, 16, dtype=torch.bfloat16) for _ in range(3))
with torch.no_grad():
    for _ in range(3):
        A.causal_attention(q3, k3, v3)
    RecordingLauncher.launches.clear()
    launches.clear()
    out = A.causal_attention(q3, k3, v3)
report["forward_alone"] = {"node": len(launches), "python": len(RecordingLauncher.launches),
                           "out": launches[0]["raw"][3] == out.data_ptr(), "grad_fn": out.grad_fn is None}
launches.clear()
q3.requires_grad_()
out = A.causal_attention(q3, k3, v3)
report["forward_alone_then_grad"] = {"node": len(launches), "python": len(RecordingLauncher.launches),
                                     "grad_fn": type(out.grad_fn).__name__}
RecordingLauncher.launches.clear()

# With a launch hook set, every launch goes through Triton's runner, which hands the hook each one.
from triton import knobs
seen = []
hook = lambda metadata: seen.append(metadata.data["name"])
knobs.runtime.launch_enter_hook.add(hook)
torch.autograd.grad(A.causal_attention(q, k, v), (q, k, v), do)
knobs.runtime.launch_enter_hook.remove(hook)
report["hooked"] = {"node": len(launches), "hook_saw": seen}
RecordingLauncher.launches.clear()

# Poisoned buffers: the node's allocations are filled before the kernels run (here no kernel runs: they stay so).
node.set_fill(True, float("nan"))
out = A.causal_attention(q, k, v)
node.set_fill(False, 0.0)
report["poisoned"] = bool(torch.isnan(out.float()).all())
report["plans"] = node.plan_count()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    return run_report(_SCRIPT, ROOT, timeout=900, unset=("GPT2TUI_ATTENTION_NODE",))


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_the_node_takes_a_shape_once_python_has_planned_it(report, dropout):
    assert report[f"before-{dropout}"] is True  # no plan yet: None, and Python runs the call
    assert report[f"node-{dropout}"] == {"python_launches_after": 0, "node_launches": 3, "grad_fn": "CppFunction"}


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_the_node_launches_what_triton_s_launcher_was_given(report, dropout):
    """Same kernel, grid, threads, shared memory and stream; every parameter equal at its kernel type (the seed
    too); the two scratch pointers Triton appends null."""
    for kernel in report[f"kernels-{dropout}"]:
        assert kernel == {"name": True, "function": True, "grid": True, "block": True, "shared": True, "stream": True, "extra": None,
                          "scratch": [0, 0], "plain": []}


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_the_node_hands_each_kernel_the_step_s_own_buffers(report, dropout):
    assert report[f"wiring-{dropout}"] == {"inputs": True, "out": True, "stats": True, "do": True, "grads": True}


def test_a_gradient_laid_out_otherwise_is_copied_into_the_output_s_layout(report):
    assert report["transposed_do"] == {"launches": 3, "copied": True, "shared": True}


def test_a_seed_past_int64_and_dual_tensors_stay_in_python(report):
    assert report["huge_seed"] == {"node": 0, "python": 3}
    assert report["dual"] == "refused: jvp" and report["dual_node"] == 0


def test_a_call_with_no_work_launches_nothing(report):
    assert report["empty"] == {"node_launches": 0, "grad_fn": "CppFunction"}


def test_a_shape_without_a_plan_and_a_hooked_launch_run_in_python(report):
    assert report["other_shape"] == {"node": 0, "python": 3}
    assert report["hooked"] == {"node": 0, "hook_saw": ["_attn_fwd_kernel", "_attn_bwd_dq_kernel",
                                                        "_attn_bwd_dkdv_kernel"]}


def test_a_call_that_needs_no_gradient_takes_the_forward_alone(report):
    assert report["forward_alone"] == {"node": 1, "python": 0, "out": True, "grad_fn": True}
    assert report["forward_alone_then_grad"] == {"node": 0, "python": 1, "grad_fn": "FlashAttentionFunctionBackward"}


def test_the_node_s_buffers_can_be_poisoned_for_the_write_everything_checks(report):
    assert report["poisoned"] is True
    assert report["plans"] == 4  # with and without dropout, T = 0, and the forward alone


def test_the_switch_turns_the_node_off_or_says_what_is_wrong():
    env = child_env(drop=("TRITON_INTERPRET",))
    code = "from gpt2tui.kernels import native; native.start(); print(native._builder is None)"
    env["GPT2TUI_ATTENTION_NODE"] = "python"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr[-2000:]
    env["GPT2TUI_ATTENTION_NODE"] = "fast"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "AttentionBackendError: $GPT2TUI_ATTENTION_NODE is 'fast'; set it to 'cpp' or 'python'" in run.stderr


# -- on CUDA: the node for real ------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _node():
    from gpt2tui.kernels import native

    node = native.load(timeout=600)
    if node is None:
        pytest.fail(f"the C++ attention node did not build in 10 minutes: {native.failure}")
    return node


def _step(q, k, v, do, **kwargs):
    from gpt2tui.kernels.attention import causal_attention

    out = causal_attention(q, k, v, **kwargs)
    # Detached: a result that kept its graph would keep q's gradient accumulator alive, with the stream it was made on,
    # and autograd syncs the caller's stream with it (an error inside a CUDA graph capture, Python path or node alike).
    grads = torch.autograd.grad(out, (q, k, v), do)
    return (out.detach(), *grads), type(out.grad_fn).__name__


# Every dtype and dropout setting at one odd shape, and the other head dims and odd lengths in bfloat16: each new
# (dtype, head dim, dropout) compiles three kernels.
_CASES = [((2, 3, 129, 64), dtype, dropout) for dtype in (torch.bfloat16, torch.float16, torch.float32)
          for dropout in (0.0, 0.1)] + [
    ((1, 5, 37, 32), torch.bfloat16, 0.0), ((3, 2, 1000, 128), torch.bfloat16, 0.1), ((1, 1, 1, 16), torch.bfloat16, 0.0)]


@cuda
@pytest.mark.parametrize(("shape", "dtype", "dropout"), _CASES, ids=[f"{s}-{str(d)[6:]}-p{p}" for s, d, p in _CASES])
def test_on_cuda_the_node_gives_what_the_python_path_gives(shape, dtype, dropout):
    """Bit for bit: the same kernels on the same inputs. The Python path's own accuracy against the float64
    reference is test_attention.py's."""
    from gpt2tui.kernels.attention import causal_attention

    node = _node()
    torch.manual_seed(1)
    q, k, v = (torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(*shape, device="cuda", dtype=dtype)
    kwargs = dict(dropout_p=dropout, seed=5 if dropout else None)
    runs = [_step(q, k, v, do, **kwargs) for _ in range(5)]  # tune, plan, run from plans and offer them; node, node
    assert [name for _, name in runs] == ["FlashAttentionFunctionBackward"] * 3 + ["CppFunction"] * 2
    node.set_fill(True, float("nan"))  # every buffer the node allocates starts poisoned: all of it must be written
    try:
        runs.append(_step(q, k, v, do, **kwargs))
        with torch.no_grad():  # the forward alone, no autograd node
            alone = causal_attention(q, k, v, **kwargs)
    finally:
        node.set_fill(False, 0.0)
    first = runs[0][0]
    assert torch.equal(alone, first[0])
    for tensors, _ in runs[1:]:
        for a, b in zip(first, tensors, strict=True):
            assert torch.equal(a, b)


@cuda
def test_on_cuda_the_node_runs_on_a_side_stream_and_in_a_cuda_graph():
    _node()
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    expected = [t.clone() for t in _step(q, k, v, do)[0]]
    for _ in range(3):
        _step(q, k, v, do)
    assert _step(q, k, v, do)[1] == "CppFunction"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _step(q, k, v, do)[0]
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, name = _step(q, k, v, do)
    assert name == "CppFunction"
    with torch.no_grad():
        for t in (q, k, v, do):
            t.mul_(0.5)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(_step(q, k, v, do)[0], captured, strict=True):
        assert torch.equal(a, b)
