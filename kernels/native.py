"""The causal attention's autograd node in C++ (`csrc/attention_node.cpp`): built on first use, fed with launch plans.

Why: a lone training step on a GPU machine with a slow host waits for that host, and a Python `autograd.Function`
costs it ~18 µs more per round trip than a C++ node, before the Python of the step itself (benchmarks/RESULTS.md).
Through the node, a step is one call from Python; its forward and its backward launch the compiled kernels from C++.

How: `attention.py` stays the path of every first call of a shape, and the twin the node is tested against. Once a
forward and a backward of a shape have run from launch plans (each launch bound to its compiled kernel), `register`
hands the node that shape's plan: the buffers' layouts and, per launch, the kernel's handle, grid, threads, shared
memory and the bytes of every parameter but the call's tensors and seed. From then on `attention` runs that shape in
C++; for any other call it returns None and Python runs it.

The node builds with torch's C++ extension tools (a C++17 compiler and ninja) the first time a CUDA step could use
it, in a background thread, so the first steps run in Python meanwhile; it is cached per torch version. Where it cannot
build, every call runs the Python path, as it does with $GPT2TUI_ATTENTION_NODE=python.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import threading
import warnings
from pathlib import Path

import torch

from .common import AttentionBackendError

ENV_VAR = "GPT2TUI_ATTENTION_NODE"
SOURCE = Path(__file__).parent / "csrc" / "attention_node.cpp"

# The C++ side's `Source`: where each launch parameter that is not fixed comes from.
Q, K, V, OUT, STATS, DO, DQ, DK, DV, SEED = range(10)
# Each kernel's tensors and seed, in its argument order (attention.py's kernels).
FORWARD_SOURCES = (Q, K, V, OUT, STATS, SEED)
DQ_SOURCES = (Q, K, V, OUT, DO, STATS, DQ, SEED)
DKDV_SOURCES = (Q, K, V, DO, STATS, DK, DV, SEED)

_INT_TYPES = {"i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64"}

node = None  # the built module, once ready: `attention.causal_attention` reads this on every call
failure: str | None = None  # why it did not build, if it did not
_lock = threading.Lock()
_builder: threading.Thread | None = None
# The compiled kernels whose handles the node launches. Triton unloads a kernel's module when its `CompiledKernel` is
# collected, and the caches that hold them now (Triton's, `Launcher.compiled`, `_PLANS`) may drop them; the node's
# plans are never dropped, so neither are these.
_kernels: list = []
_recording = False  # a test's recorder stands in for cuLaunchKernel: plans for CPU tensors are taken too


def wanted() -> bool:
    value = os.environ.get(ENV_VAR, "cpp")
    if value not in ("cpp", "python"):
        raise AttentionBackendError(f"${ENV_VAR} is {value!r}; set it to 'cpp' or 'python', or unset it")
    return value == "cpp"


def _build_directory(name: str) -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find_ninja() -> None:
    """torch builds with the `ninja` on PATH. The PyPI package (an install requirement) puts one beside this Python,
    whose folder is not on PATH when a venv's Python runs without the venv activated."""
    if shutil.which("ninja") is not None:
        return
    folders = [os.path.dirname(sys.executable)]
    try:
        import ninja  # deferred: only a build needs it, and only where PATH lacks one

        folders.append(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for folder in folders:
        if shutil.which("ninja", path=folder) is not None:
            os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), folder])
            return


def _build() -> None:
    global node, failure
    try:
        # Deferred: only a CUDA host builds the node. cpp_extension pulls in setuptools; fcntl is POSIX-only.
        import fcntl

        from torch.utils import cpp_extension

        # One build per torch version and Python: the module links against both.
        tag = f"{torch.__version__}_{sys.implementation.cache_tag}"
        name = "gpt2tui_attention_node_" + "".join(c if c.isalnum() else "_" for c in tag)
        directory = _build_directory(name)
        with open(directory / "gpt2tui.lock", "w") as lock:
            # torch's own lock is a file that a builder killed mid-build leaves behind, and every later build would
            # wait on it forever. This one the kernel releases with its process (and a forked child does not inherit
            # it): whoever holds it is the only builder, so a torch lock file found then is stale.
            fcntl.lockf(lock, fcntl.LOCK_EX)
            (directory / "lock").unlink(missing_ok=True)
            _find_ninja()
            module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=["-O2"],
                                        build_directory=str(directory), verbose=False)
    except Exception as err:  # no compiler, no ninja, headers that do not fit: the Python path runs everything
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [repr(err)]
        # The compiler's first error (or the shell's "not found") says more than ninja's last line ("build stopped:
        # subcommand failed") or its first, the whole compile command.
        said = next((line for line in lines if "error:" in line or line.endswith("not found")), lines[-1])
        failure = f"{type(err).__name__}: {said}"
        warnings.warn(f"gpt2tui: the C++ attention node did not build ({failure}); attention runs its Python path",
                      RuntimeWarning, stacklevel=1)
        return
    node = module


def start() -> None:
    """Starts building the node in the background, once per process (nothing if it is not wanted)."""
    global _builder
    if _builder is not None or not wanted():
        return
    with _lock:
        if _builder is None:
            _builder = threading.Thread(target=_build, name="gpt2tui-attention-node-build", daemon=True)
            _builder.start()


def load(timeout: float | None = None):
    """Builds the node if needed and waits for it; returns the module, or None (see `failure`)."""
    start()
    if _builder is not None:
        _builder.join(timeout)
    return node


def record_launches(address: int) -> None:
    """Tests: the node hands every launch to the function at `address` (cuLaunchKernel's signature) instead of the
    driver, and takes plans for CPU tensors; 0 restores the driver."""
    global _recording
    load().set_fake_launch(address)
    _recording = address != 0


def _raw(ty: str, value) -> int | None:
    """A fixed parameter's bytes as the kernel reads them, little-endian in the low bytes of 8; None: not one we pack."""
    try:
        if ty in _INT_TYPES and isinstance(value, (bool, int)):
            return int(value) & 0xFFFF_FFFF_FFFF_FFFF
        if ty in ("fp32", "f32") and isinstance(value, (int, float)):
            return struct.unpack("<I", struct.pack("<f", value))[0]
        if ty == "fp64" and isinstance(value, (int, float)):
            return struct.unpack("<Q", struct.pack("<d", value))[0]
    except (OverflowError, struct.error):  # a float32 parameter out of float32's range: Python's path handles it
        return None
    return None


def launch_spec(runner, sources: tuple[int, ...]) -> tuple | None:
    """A bound launch (`launch.Launcher.bind`) as the node takes it, or None where the node could not launch it the
    way Triton's own launcher would (clusters, scratch memory, cooperative or PDL launches, a parameter type it does
    not pack)."""
    bound = getattr(runner, "bound", None)
    if bound is None:
        return None
    compiled, grid, template, places = bound
    meta = compiled.metadata
    if (getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "global_scratch_size", 0)
            or getattr(meta, "profile_scratch_size", 0) or getattr(meta, "launch_cooperative_grid", False)
            or getattr(meta, "launch_pdl", False)):
        return None
    signature = list(getattr(compiled.src, "signature", {}).values())
    if len(signature) != len(template) or len(places) != len(sources):
        return None
    from_call = {arg: sources[value] for value, arg in places}
    fixed, call = [], []
    for i, ty in enumerate(signature):
        if ty == "constexpr":
            continue
        if i in from_call:
            call.append((len(fixed), from_call[i]))
            fixed.append(0)
            continue
        raw = _raw(ty, template[i])
        if raw is None:
            return None
        fixed.append(raw)
    # Triton's launcher passes two more pointers after the arguments, global and profile scratch, both null here; a
    # kernel compiled by a Triton that declares fewer never reads the rest.
    fixed += [0, 0]
    function = compiled.function
    target = getattr(meta, "target", None)
    if not isinstance(function, int) or function == 0 or getattr(target, "backend", "cuda") != "cuda":
        return None
    threads = getattr(target, "warp_size", 32) * meta.num_warps
    return function, tuple(grid), threads, meta.shared, fixed, call


def _strides(shape, stride) -> tuple:
    if stride is not None:
        return tuple(stride)
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return tuple(reversed(out))


def register(q, k, v, dropout_p: float, scale: float, seed: int, forward_plan, backward_plan=None) -> bool:
    """Hands the node the plan of q, k, v's call shape: `forward_plan` and `backward_plan` are attention.py's
    (allocation layouts, bound launches) for it, the backward's made for a dO laid out as the output. Without a
    backward plan the node runs only calls of this shape that need no gradient. Returns whether the node took it."""
    if node is None or not (_recording or (q.is_cuda and torch.version.hip is None)):
        return False  # cuLaunchKernel is CUDA's: ROCm and CPU tensors stay in Python
    if not -(2**63) <= seed < 2**63:
        return False  # the node's seed is an int64
    (out_layout, stats_layout), (forward,) = forward_plan
    forward_spec = launch_spec(forward, FORWARD_SOURCES)
    grads = dq_spec = dkdv_spec = None
    if backward_plan is not None:
        grads_layout, (dq, dkdv) = backward_plan
        grads = (tuple(grads_layout[0]), _strides(grads_layout[0], grads_layout[3]))
        dq_spec, dkdv_spec = launch_spec(dq, DQ_SOURCES), launch_spec(dkdv, DKDV_SOURCES)
        if dq_spec is None or dkdv_spec is None:
            return False
    if forward_spec is None:
        return False
    out = (tuple(out_layout[0]), _strides(out_layout[0], out_layout[3]))
    key = node.key(q, k, v, float(dropout_p), float(scale), int(seed))
    if not node.register_plan(key, out, grads, stats_layout[0][0], forward_spec, dq_spec, dkdv_spec):
        return False
    _kernels.extend(launch.bound[0] for launch in (forward, *(backward_plan[1] if backward_plan else ())))
    return True
