"""Launching our Triton kernels without Triton's per-call Python, once a specialization is compiled.

Why: `kernel[grid](...)` runs `JITFunction.run` on every call: it binds every argument by name, derives the
specialization key, hashes it with the compile options, and builds launch metadata, ~13 µs of host time on Triton 3.6
and ~22 µs on 3.9 before its C launcher starts (RESULTS.md). A training step launches four attention kernels per
layer and an eager decode step two, so that time is often longer than the kernels'.

How: the first call of each specialization goes through Triton, which compiles and returns the `CompiledKernel`;
later calls launch that kernel through its C launcher (`CompiledKernel.run`), with the stream Triton's own runner
would find. That runner (`compiled[grid](*args)`) also builds launch metadata for profiler hooks, ~1.5 µs a launch on
the CPU even with none set, so it is used only while a launch hook is set (proton's, say).
The one thing to get right is *which* compiled kernel a call may reuse. Triton specializes on each tensor's dtype and
16-byte alignment and on integer values (== 1, divisible by 16, 32- or 64-bit); this key is finer: tensors by dtype,
alignment and device, other arguments by exact value, the launch options and constexprs by value. So two calls that
share a key share Triton's specialization too. The only integers not keyed by value are the `volatile` ones (a
dropout seed, new every step), which the kernels mark `do_not_specialize`, so Triton does not specialize on them
either; they are keyed by their width.

Off under Triton's interpreter (it compiles nothing), before Triton 3.3 (whose launcher took a different argument
list), and when $GPT2TUI_TRITON_LAUNCH is "triton" (every call through `JITFunction.run`, as a check).
"""

from __future__ import annotations

import os
from operator import itemgetter

import torch
import triton
from triton.runtime import driver

try:
    from triton import knobs
except ImportError:  # before Triton 3.4 the launch hooks lived elsewhere: every launch goes through Triton's runner
    knobs = None

from .common import AttentionBackendError, _interpreting

ENV_VAR = "GPT2TUI_TRITON_LAUNCH"
_MAX_KERNELS = 512  # per kernel; a run that keeps changing shapes starts over rather than growing without bound


def _enabled() -> bool:
    value = os.environ.get(ENV_VAR, "direct")
    if value not in ("direct", "triton"):
        raise AttentionBackendError(f"${ENV_VAR} is {value!r}; set it to 'direct' or 'triton', or unset it")
    major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    return value == "direct" and not _interpreting() and (major, minor) >= (3, 3)


def _width(value: int) -> int:
    """Which of Triton's integer types an unspecialized int argument gets: i32, i64, or u64 (2**63 and above)."""
    return 0 if -(2**31) <= value < 2**31 else 1 if value < 2**63 else 2


def _aligned(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is 16-byte aligned, as the kernels a launch plan binds were compiled to assume."""
    ptr = 0
    for t in tensors:
        ptr |= t.data_ptr()
    return ptr % 16 == 0


def _idle(hook) -> bool:
    # A HookChain (Triton 3.5 on) is never None, even with nothing in it; before that an unset hook was None.
    return hook is None or (type(hook).__name__ == "HookChain" and not hook.calls)


def _hooks_idle() -> bool:
    """No launch hook is set (a profiler's, say, which must see every launch). Before Triton 3.4 the hooks lived
    elsewhere: every launch then goes through Triton's runner."""
    return knobs is not None and _idle(knobs.runtime.launch_enter_hook) and _idle(knobs.runtime.launch_exit_hook)


def _runner(compiled, grid: tuple, device: int | None = None, template: list | None = None, places: tuple = ()):
    """`compiled[grid]`: launches the compiled kernel over `grid` with the current stream of `device` (None: of the
    current device, looked up on each launch). While no launch hook is set, straight through the C launcher with no
    launch metadata (what the hooks would have been handed), as Triton's runner would call it; otherwise through that
    runner, so a profiler sees every launch.

    With a `template` (the kernel's arguments, None where the call gives them), the runner takes only those: `places`
    pairs each one's position among the call's values with its position in the arguments."""
    grid = (*grid, 1, 1)[:3]
    through_triton = compiled[grid]  # loads the kernel on first use
    run, function, packed = compiled.run, compiled.function, getattr(compiled, "packed_metadata", None)
    gx, gy, gz = grid
    current_device, stream = driver.active.get_current_device, driver.active.get_current_stream

    def runner(*values):
        if template is None:
            args = values
        else:
            args = template.copy()
            for j, i in places:
                args[i] = values[j]
        if _hooks_idle():
            run(gx, gy, gz, stream(current_device() if device is None else device), function, packed, None, None, None,
                *args)
        else:
            through_triton(*args)

    if template is not None:
        runner.bound = compiled, grid, template, places  # for the C++ attention node (native.py)
    return runner


def _pick(positions: list[int]):
    """args → the tuple of the args at `positions`. itemgetter picks in C, but gives a bare item for one position."""
    if not positions:
        return lambda args: ()
    get = itemgetter(*positions)
    return get if len(positions) > 1 else lambda args: (get(args),)


class Launcher:
    """`Launcher(kernel)(grid, *args, **kwargs)` launches like `kernel[grid](*args, **kwargs)`.

    `grid` is a tuple of up to three ints. Runtime arguments are positional, in the kernel's order, with the same
    kind of argument (tensor, int, float) at each position on every call; constexprs and launch options (num_warps,
    num_stages) are keywords, every constexpr given (none left to its default). The tensors' device must be the
    current one, as for any Triton launch (Triton loads and launches a kernel on the current device; the key names
    the tensors').
    """

    def __init__(self, kernel, volatile: tuple[str, ...] = ()):
        self.kernel = kernel
        self.names = kernel.arg_names
        self.volatile = tuple(self.names.index(name) for name in volatile)
        self.compiled: dict[tuple, object] = {}
        self.direct = _enabled()
        self._layout = None  # (argument count, tensor getter, plain-value getter), from the first call

    def _getters(self, args: tuple):
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        plain = [i for i in range(len(args)) if i not in set(tensors) | set(self.volatile)]
        return len(args), _pick(tensors), _pick(plain)

    def key(self, args: tuple, kwargs: dict) -> tuple:
        """Finer than Triton's specialization: each tensor's dtype and 16-byte alignment, the device, every other
        argument by value (floats too: they are constant per model, and a float is never specialized), volatile ints
        by Triton's integer type for them, and the keywords."""
        if self._layout is None or self._layout[0] != len(args):
            self._layout = self._getters(args)
        _, tensors, plain = self._layout
        ts = tensors(args)
        return (
            ts[0].device,
            tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in ts]),
            plain(args),
            tuple([_width(args[i]) for i in self.volatile]),
            tuple(kwargs.items()),
        )

    def __call__(self, grid: tuple, *args, bind: bool = False, **kwargs):
        """Launches; with `bind`, returns this call bound (`bind`), or None where it cannot be."""
        if not self.direct:
            self.kernel[grid](*args, **kwargs)
            return None
        key = self.key(args, kwargs)
        hit = self.compiled.get(key)
        if hit is None:
            compiled = self.kernel[grid](*args, **kwargs)  # Triton binds, compiles if needed, and launches
            if compiled is not None:  # None: Triton was only asked to warm up, or is stubbed out
                if len(self.compiled) >= _MAX_KERNELS:
                    self.compiled.clear()
                # The launcher takes the constexprs too, after the runtime arguments; they are part of the key.
                self.compiled[key] = compiled, tuple(kwargs[name] for name in self.names[len(args):])
        else:
            compiled, constexprs = hit
            _runner(compiled, grid)(*args, *constexprs)
        return self.bind(grid, args, kwargs) if bind else None

    def bind(self, grid: tuple, args: tuple, kwargs: dict):
        """This call with everything fixed but its tensors and volatile arguments, or None before its specialization
        is compiled (or with direct launches off).

        Returns `launch(*values)`: `values` are the tensors and volatile arguments, in the kernel's argument order.
        It launches the compiled kernel with no key to build or look up (~2 µs less per launch than a call), so it is
        only for calls that would have this call's key: the caller's own cache must imply every other argument, and
        the tensors' dtypes, 16-byte alignment and device. That device must be current when it launches, as it is
        now: the launch takes the stream of the device current at binding. The bound call keeps no tensor of its own.
        """
        if not self.direct:
            return None
        hit = self.compiled.get(self.key(args, kwargs))
        if hit is None:
            return None
        compiled, constexprs = hit
        slots = sorted([i for i, a in enumerate(args) if isinstance(a, torch.Tensor)] + list(self.volatile))
        template = [None if i in slots else a for i, a in enumerate(args)] + list(constexprs)
        places = tuple(enumerate(slots))  # (position in values, position in the kernel's arguments)
        return _runner(compiled, grid, driver.active.get_current_device(), template, places)
