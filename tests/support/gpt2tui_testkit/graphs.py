"""A CPU stand-in for `gpt2tui.decode_graph.CUDAGraph`, for tests that cannot capture a real CUDA graph.

It replays by calling the captured step again. What makes that a test of capturability is the op trace: every replay
must dispatch the same ops, with the same shapes, strides and non-tensor arguments, as the first (a position or
length read from the host would show up as a changing slice bound or scalar), and none of them may sync with the
device or build a tensor from host data, which a capture forbids.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

# Ops a captured step must not contain: they read device values on the host, or build tensors from host data.
SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.lift_fresh", "aten.item", "aten.equal", "aten.is_nonzero")


class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}

        def describe(a):
            if isinstance(a, torch.Tensor):
                return ("tensor", tuple(a.shape), tuple(a.stride()), a.dtype)
            if isinstance(a, torch.UntypedStorage | torch.TypedStorage):
                return ("storage", a.nbytes())
            return a

        self.ops.append((str(func), repr(tree_map(describe, (args, kwargs)))))
        return func(*args, **kwargs)


class ReplayByCalling:
    """A CPU stand-in for `decode_graph.CUDAGraph` that checks each replay dispatches exactly the first one's ops."""

    instances: list["ReplayByCalling"] = []

    def __init__(self, device):
        self.fn, self.first, self.replays = None, None, 0
        ReplayByCalling.instances.append(self)

    def warm_up(self, fn):
        fn()

    def capture(self, fn):
        self.fn = fn  # a CUDA capture runs nothing either

    def replay(self):
        with _Trace() as trace:
            self.fn()
        syncing = [op for op, _ in trace.ops if op.startswith(SYNCING)]
        assert not syncing, f"a captured step may not sync with the host: {syncing}"
        if self.first is None:
            self.first = trace.ops
        else:
            changed = next((i for i, (a, b) in enumerate(zip(self.first, trace.ops, strict=False)) if a != b), None)
            assert len(trace.ops) == len(self.first) and changed is None, (
                f"replay {self.replays} differs from the first at op {changed}: "
                + (f"{self.first[changed]} vs {trace.ops[changed]}" if changed is not None else "in length")
            )
        self.replays += 1
