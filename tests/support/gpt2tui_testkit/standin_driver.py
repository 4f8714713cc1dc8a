"""A stand-in for Triton's CUDA driver: kernels compile for sm_90 (Triton ships ptxas) and "launch" into a list.

With it, Triton's whole host path runs on a machine without a GPU, up to the C launcher, which it replaces by a
recorder of the arguments it would have been given. That lets tests compare what our direct launches pass
(`kernels/launch.py`) with what Triton's own `JITFunction.run` passes, and lets benchmarks time both. Only for a
process whose kernels were not decorated for the interpreter (run it in a subprocess from the kernel tests).
"""

import json
import subprocess
import sys

import pytest
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

from . import child_env


class RecordingLauncher:
    """Triton builds one per compiled kernel and calls it with (grid x, y, z, stream, function, packed metadata,
    launch metadata, enter hook, exit hook, *kernel arguments)."""

    launches: list[tuple] = []

    def __init__(self, src, metadata):
        self.name = getattr(src, "name", "?")

    def __call__(self, *args):
        # As Triton's C launcher does: the enter hook with the launch metadata, when a hook is given.
        if args[7] is not None:
            args[7](args[6])
        RecordingLauncher.launches.append((self.name, args))


class _Utils:
    loaded = 0

    def load_binary(self, name, kernel, shared, device):
        # module, function, registers, spills, max threads. Never used as handles; a handle per kernel lets a test
        # tell which kernel a launch was given.
        _Utils.loaded += 1
        return 1, 1000 + _Utils.loaded, 32, 0, 1024

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                "sm_clock_rate": 1, "mem_clock_rate": 1, "mem_bus_width": 1}


class StandInDriver:
    def __init__(self):
        self.utils = _Utils()
        self.launcher_cls = RecordingLauncher

    def is_active(self):
        return True

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_device_capability(self, device):
        return 9, 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def map_python_to_cpp_type(self, ty):
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)


def install():
    """Makes the stand-in Triton's active driver; returns the one it replaced (None if none was chosen yet)."""
    previous = driver._active
    driver.set_active(StandInDriver())
    return previous


def uninstall(previous) -> None:
    driver._active = previous  # not reset_active(): on a machine without a GPU there is no real driver to reset to


def run_report(script: str, root, timeout: int, unset: tuple[str, ...] = ()) -> dict:
    """Runs a test's stand-in `script` in a fresh Python (kernels compiled for real, not interpreted; one config, as
    the stand-in cannot time candidates) and returns the JSON report it prints last. Skips where Triton cannot compile
    for sm_90 here."""
    env = child_env(drop=("TRITON_INTERPRET", "GPT2TUI_TRITON_LAUNCH", *unset), GPT2TUI_TRITON_AUTOTUNE="0")
    run = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if run.returncode != 0:
        tail = run.stderr.strip().splitlines()[-1:]
        if "ptxas" in run.stderr or "GPUTarget" in run.stderr:
            pytest.skip(f"cannot compile for sm_90 here: {tail}")
        raise AssertionError(run.stderr[-4000:])
    return json.loads(run.stdout.strip().splitlines()[-1])
