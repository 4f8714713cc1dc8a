"""A stand-in for Triton's CUDA driver: kernels compile for sm_90 (Triton ships ptxas) and "launch" into a list.

With it, Triton's whole host path runs on a machine without a GPU, up to the C launcher, which it replaces by a
recorder of the arguments it would have been given. That lets the GPU-only benchmark scripts run here
(`tests/kernels/test_gpu_scripts.py`). Only for a process whose kernels were not decorated for the interpreter (run
it in a subprocess from the kernel tests).
"""


import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver


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
