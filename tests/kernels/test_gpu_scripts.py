"""The GPU-only benchmark and profiling scripts still run after a refactor: each is run here behind the stand-in
driver, on meta tensors, a few calls per workload.

A GPU machine is lent to few sessions, for minutes; a script broken by a change made without one (a helper's new
signature, say) would waste that time. What they print here means nothing: only that every workload runs.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from gpt2tui_testkit import child_env

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
from gpt2tui_testkit.standin_driver import RecordingLauncher, install
install()
RecordingLauncher.__call__ = lambda self, *args: None
import torch
from torch.profiler import ProfilerActivity
from gpt2tui.kernels import attention as A

torch.cuda.synchronize = lambda *args: None
torch.cuda.get_device_name = lambda *args: "stand-in"
for tuner in (A._attn_fwd, A._attn_bwd_dkdv, A._attn_bwd_dq):
    tuner._bench = lambda *args, **kwargs: [1.0]
meta = lambda *shape, device=None, requires_grad=False, **kw: torch.empty(*shape, device="meta", **kw).requires_grad_(
    requires_grad)
torch.randn, torch.randn_like = meta, torch.empty_like

import profile_attention
profile_attention.ProfilerActivity = type("Activities", (), {"CUDA": ProfilerActivity.CPU})
profile_attention.main()
print("ran")
"""


def test_the_profiling_script_runs():
    # One config: the stand-in cannot time candidates.
    env = child_env(drop=("TRITON_INTERPRET",), GPT2TUI_TRITON_AUTOTUNE="0")
    run = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    if run.returncode != 0 and ("ptxas" in run.stderr or "GPUTarget" in run.stderr):
        pytest.skip(f"cannot compile for sm_90 here: {run.stderr.strip().splitlines()[-1:]}")
    assert run.returncode == 0 and run.stdout.rstrip().endswith("ran"), run.stderr[-4000:]


_BENCH = r"""
import contextlib, os, sys
from gpt2tui_testkit.standin_driver import RecordingLauncher, install
install()
RecordingLauncher.__call__ = lambda self, *args: None
import pytest, torch, triton.testing
from gpt2tui.kernels import attention as A, decode as DEC

torch.cuda.is_available = lambda: True
torch.cuda.synchronize = lambda *args: None
torch.cuda.get_device_name = lambda *args: "stand-in"
torch.cuda.Stream, torch.cuda.stream = lambda *args, **kw: None, lambda stream: contextlib.nullcontext()
# Each timing calls the workload once and reports 0.1 ms.
triton.testing.do_bench = triton.testing.do_bench_cudagraph = lambda fn, **kw: (fn(), 0.1)[1]
def on_meta(make):
    return lambda *args, device=None, **kw: make(*args, device="meta" if device == "cuda" else device, **kw)
torch.randn, torch.tensor = on_meta(torch.randn), on_meta(torch.tensor)
for tuner in (A._attn_fwd, A._attn_bwd_dkdv, A._attn_bwd_dq):
    tuner._bench = lambda *args, **kwargs: [1.0]
DEC._INTERPRETED = True  # lets meta tensors past the decode's device check; nothing runs anyway
DEC._device_sms = lambda device: 132
# The agreement check compares values, which meta tensors do not have.
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--benchmark-disable", "benchmarks/bench_attention.py",
                      "--deselect", "benchmarks/bench_attention.py::test_benchmarked_paths_agree"]))
"""


def test_the_attention_benchmarks_run():
    env = child_env(drop=("TRITON_INTERPRET",), GPT2TUI_TRITON_AUTOTUNE="0")
    run = subprocess.run([sys.executable, "-c", _BENCH], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    if run.returncode != 0 and ("ptxas" in run.stderr or "GPUTarget" in run.stderr):
        pytest.skip(f"cannot compile for sm_90 here: {run.stderr.strip().splitlines()[-1:]}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
