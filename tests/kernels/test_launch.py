"""Direct launches (kernels/launch.py) hand Triton's C launcher exactly what `JITFunction.run` would, and reuse a
compiled kernel only where Triton's specialization would be the same.

Checked without a GPU: a subprocess compiles the real kernels for sm_90 behind a stand-in driver whose launcher
records its arguments (`standin_driver.py`). The first call of a specialization goes through Triton; the second,
through our launcher; the recorded launches must match argument for argument. On CUDA every kernel test runs the
direct path for real.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from gpt2tui_testkit import child_env  # noqa: E402
from gpt2tui_testkit.standin_driver import run_report  # noqa: E402  (it imports Triton)

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, os, sys
from gpt2tui_testkit.standin_driver import RecordingLauncher, install
install()
import torch
from gpt2tui.kernels import attention as A, decode as DEC

def describe(launch):
    name, args = launch
    # (grid x, y, z, stream, function, packed metadata, launch metadata, enter hook, exit hook, *kernel arguments);
    # launch metadata is a fresh object on every launch, so only its contents count.
    meta = args[6]
    def one(a):
        if isinstance(a, torch.Tensor):
            return ["tensor", list(a.shape), list(a.stride()), str(a.dtype), a.data_ptr() % 16]
        return repr(a)
    return [name, [one(a) for a in args[:6]], repr(sorted(meta.data.items())) if meta is not None else None,
            [None if a is None else "hook" for a in args[7:9]], [one(a) for a in args[9:]]]

def take():
    out = [describe(x) for x in RecordingLauncher.launches]
    RecordingLauncher.launches.clear()
    return out

report = {}
torch.manual_seed(0)
q, k, v = (torch.randn(2, 3, 45, 32, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn(2, 3, 45, 32, dtype=torch.bfloat16)
for dropout in (0.0, 0.1):
    steps = []
    for seed in (11, 12, 13):  # with dropout the seed changes; the compiled kernels must not
        torch.autograd.grad(A.causal_attention(q, k, v, dropout_p=dropout, seed=seed), (q, k, v), do)
        steps.append(take())
    report[f"step-{dropout}"] = steps
# A planned step hands each kernel the very buffers the step makes and returns, not only buffers shaped like them.
take()
out = A.causal_attention(q, k, v)
grads = torch.autograd.grad(out, (q, k, v), do)
tensors = {name: [a.data_ptr() for a in args[9:] if isinstance(a, torch.Tensor)] for name, args in
           RecordingLauncher.launches}
RecordingLauncher.launches.clear()
fwd, dq_, dkdv = tensors["_attn_fwd_kernel"], tensors["_attn_bwd_dq_kernel"], tensors["_attn_bwd_dkdv_kernel"]
report["plan_wiring"] = {
    "inputs": [fwd[:3], dq_[:3], dkdv[:3]] == [[t.data_ptr() for t in (q, k, v)]] * 3,
    "out": fwd[3] == out.data_ptr() == dq_[3],  # O, written by the forward, read by dQ for Δ
    "stats": fwd[4] == dq_[5] == dkdv[4],  # the log-sum-exp buffer, with Δ in it
    "do": dq_[4] == dkdv[3] == do.data_ptr(),
    "grads": [dq_[6], dkdv[5], dkdv[6]] == [g.data_ptr() for g in grads],
}
report["compiled"] = {str(t.fn.fn.__name__): len(l.compiled) for t, l in A._LAUNCHERS.items()}
report["plans"] = len(A._PLANS)

# With a launch hook set (a profiler's), every launch goes through Triton's runner again, hook and metadata included.
from triton import knobs
seen = []
hook = lambda metadata: seen.append(metadata.data["name"])
knobs.runtime.launch_enter_hook.add(hook)
torch.autograd.grad(A.causal_attention(q, k, v, dropout_p=0.1, seed=14), (q, k, v), do)
knobs.runtime.launch_enter_hook.remove(hook)
report["hooked"] = take()
report["hook_saw"] = seen
torch.autograd.grad(A.causal_attention(q, k, v, dropout_p=0.1, seed=15), (q, k, v), do)
report["unhooked"] = take()

# A tensor that is not 16-byte aligned must not reuse the kernel compiled for aligned ones: here O, which only the
# dQ kernel reads (it makes Δ from it). Two backward passes: the first compiles, the second reuses.
o = torch.empty(2 * 3 * 45 * 32 + 1, dtype=torch.bfloat16)[1:].view(2, 3, 45, 32)
lse = A._stats(2, 3, 45, "cpu")
for _ in range(2):
    A._backward(do, q.detach(), k.detach(), v.detach(), o, lse, 0.17, 0.0, 0)
report["misaligned"] = take()
dq = A._LAUNCHERS[A._attn_bwd_dq]
report["dq_kernels"] = len(dq.compiled)
report["dq_distinct"] = len({id(c) for c, _ in dq.compiled.values()})

# With a plan for aligned tensors of this very shape at hand, a misaligned O still gets its own kernel.
o_ok = torch.empty(2, 3, 45, 32, dtype=torch.bfloat16)
for _ in range(3):
    A._backward(do, q.detach(), k.detach(), v.detach(), o_ok, lse, 0.17, 0.0, 0)
take()
A._backward(do, q.detach(), k.detach(), v.detach(), o, lse, 0.17, 0.0, 0)
report["misaligned_after_plan"] = take()

# A plan binds shapes and strides, never the tensors it was made from.
import gc, weakref
qa, ka, va = (torch.randn(1, 2, 20, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
for _ in range(3):
    torch.autograd.grad(A.causal_attention(qa, ka, va), (qa, ka, va), torch.ones_like(qa))
take()
alive = weakref.ref(qa)
del qa, ka, va
gc.collect()
report["plan_keeps_tensors"] = alive() is not None

# Decode: split into 3 and merged by the second kernel, then one split writing directly.
qd = torch.randn(2, 3, 1, 32, dtype=torch.float16)
kc, vc = (torch.randn(2, 3, 300, 32, dtype=torch.float16) for _ in range(2))
lens = torch.tensor([100, 300])
for splits in (3, 1):
    for _ in range(2):
        DEC._launch(qd, kc, vc, lens, 0.17, 300, splits)
    report[f"decode-{splits}"] = take()
    # The second call ran from the plan: its launches got the call's own inputs and the output it returned.
    out = DEC._launch(qd, kc, vc, lens, 0.17, 300, splits)
    ptrs = [[a.data_ptr() for a in args[9:] if isinstance(a, torch.Tensor)] for _, args in RecordingLauncher.launches]
    RecordingLauncher.launches.clear()
    inputs = [t.data_ptr() for t in (qd, kc, vc, lens)]
    report[f"decode-{splits}-wiring"] = ptrs[0][:4] == inputs and (
        ptrs[0][4] == out.data_ptr() if splits == 1 else ptrs[1][:2] == ptrs[0][5:7] and ptrs[1][2] == out.data_ptr())
report["decode_plans"] = len(DEC._PLANS)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    return run_report(_SCRIPT, ROOT, timeout=600)


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_a_training_step_launches_what_triton_would(report, dropout):
    """Step 1 (seed 11) goes through Triton's autotuner, step 2 (seed 12) through `Launcher`, which hands each
    kernel's first sight to Triton's `JITFunction.run`, step 3 (seed 13) through the step's bound launches
    (`attention._PLANS`): the launcher sees the same grid, stream, kernel and arguments, but for the seed, passed
    through as given. With no launch hook set, the bound launches hand it no hooks and no metadata."""
    through_triton, *direct = report[f"step-{dropout}"]
    names = [launch[0] for launch in through_triton]
    assert names == ["_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"]
    assert all(a[2] is not None and a[3] == ["hook", "hook"] for a in through_triton)
    for seed, step in zip(("12", "13"), direct, strict=True):
        for a, b in zip(through_triton, step, strict=True):
            assert a[:2] == b[:2]
            assert b[2:4] == (a[2:4] if seed == "12" else [None, [None, None]])
            changed = [(x, y) for x, y in zip(a[4], b[4], strict=True) if x != y]
            assert changed == [("11", seed)], a[0]
    assert report["plans"] == 4  # forward and backward, with and without dropout


def test_a_launch_hook_sees_every_launch_while_it_is_set(report):
    """A profiler's launch hook (proton's, say) gets every launch with its metadata, as through Triton itself; once
    it is removed, launches skip the hooks again."""
    names = ["_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"]
    assert report["hook_saw"] == names
    hooked, unhooked = report["hooked"], report["unhooked"]
    assert [a[0] for a in hooked] == names and all(a[2] is not None and a[3] == ["hook", "hook"] for a in hooked)
    assert [a[0] for a in unhooked] == names and all(a[2] is None and a[3] == [None, None] for a in unhooked)
    for a, b in zip(hooked, unhooked, strict=True):
        assert a[:2] == b[:2]
        assert [(x, y) for x, y in zip(a[4], b[4], strict=True) if x != y] == [("14", "15")]


def test_a_planned_step_hands_each_kernel_the_step_s_own_buffers(report):
    assert report["plan_wiring"] == {"inputs": True, "out": True, "stats": True, "do": True, "grads": True}


def test_each_kernel_compiles_once_per_dropout_setting_not_per_seed(report):
    assert report["compiled"] == {"_attn_fwd_kernel": 2, "_attn_bwd_dkdv_kernel": 2, "_attn_bwd_dq_kernel": 2}


def test_a_misaligned_tensor_gets_its_own_kernel(report):
    launches = report["misaligned"]
    assert [launch[0] for launch in launches] == ["_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"] * 2
    # The first pass goes through Triton, the second through `Launcher`: the same kernel and arguments.
    assert [(a[:2], a[4]) for a in launches[:2]] == [(a[:2], a[4]) for a in launches[2:]]
    assert launches[0][4][3][-1] == 2  # Q, K, V, then O: 2 bytes past a 16-byte boundary
    assert report["dq_kernels"] == 3 and report["dq_distinct"] == 3  # two dropout settings, and the misaligned O
    assert report["misaligned_after_plan"] == launches[2:]  # the aligned step's plan is not used for it


def test_a_launch_plan_keeps_no_tensor_alive(report):
    assert report["plan_keeps_tensors"] is False


@pytest.mark.parametrize("splits", ["3", "1"])
def test_decode_launches_what_triton_would(report, splits):
    """The first call goes through Triton, the second through its launch plan: no hooks, no metadata."""
    launches = report[f"decode-{splits}"]
    per_call = 2 if splits == "3" else 1
    assert len(launches) == 2 * per_call
    for a, b in zip(launches[:per_call], launches[per_call:], strict=True):
        assert a[:2] == b[:2] and a[4] == b[4]
        assert a[3] == ["hook", "hook"] and b[2:4] == [None, [None, None]]
    # From the first call on, the call runs from its launch plan, with the call's own buffers.
    assert report[f"decode-{splits}-wiring"] is True
    assert report["decode_plans"] == 2


@pytest.mark.parametrize("value", ["triton", "fast"])
def test_the_switch_sends_launches_through_triton_or_says_what_is_wrong(value):
    env = child_env(drop=("TRITON_INTERPRET",))
    env["GPT2TUI_TRITON_LAUNCH"] = value
    code = "from gpt2tui.kernels import attention as A; print(A._LAUNCHERS[A._attn_fwd].direct)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if value == "triton":
        assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr[-2000:]
    else:
        assert run.returncode != 0
        assert "AttentionBackendError: $GPT2TUI_TRITON_LAUNCH is 'fast'; set it to 'direct' or 'triton'" in run.stderr


def test_volatile_ints_are_keyed_by_the_integer_type_triton_gives_them():
    """A seed that needs a wider type than an earlier one must not reuse the kernel compiled for the narrower."""
    from triton.runtime.jit import mangle_type

    from gpt2tui.kernels.launch import _width

    for value in (0, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**31) - 1, -(2**63)):
        assert ("i32", "i64", "u64")[_width(value)] == mangle_type(value), value
