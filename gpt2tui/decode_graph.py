"""One-token decode steps of the whole model, captured once in a CUDA graph and replayed for every token.

Why: at batch 1 a GPT-2 decode step is ~10 small kernels per layer, each a few µs of GPU time but 5–20 µs of Python
and launch on the host (Triton's launcher alone is ~12 µs; RESULTS.md), so the GPU spends most of a step waiting. A
CUDA graph replays every kernel of the step from one host call: the approach of gpt-fast ("reduce-overhead") and of
vLLM's decode graphs, done here without a compiler so the captured code is the model's own eager code.

What a captured step may not do is what shapes this module:

- read a host value that changes per token: it would be frozen into the graph. So the step's positions and lengths
  live in a device tensor that the graph itself advances (`_DeviceLengths`), the KV cache is written through device
  indices (`KVCache.scatter`), and attention gets no host `max_len` (every backend then reads the whole cache, masked
  by the device lengths; `kernels.decode_attention`);
- sync with the device (`.item()`, `.tolist()`), or take new memory between replays: the token ids come in through a
  static buffer and the logits go out through another.

The first step of a graph runs eagerly on the capture stream (it compiles Triton kernels and creates cuBLAS handles,
which capture cannot), then the graph is captured and replayed from the second step on. A batch that loses rows gets a
new cache (`KVCache.select_rows`), so the caller builds a new `GraphedDecodeStep`.
"""

from __future__ import annotations

import os
import warnings

import torch

from .cache import KVCache
from .errors import ConfigError

ENV_VAR = "GPT2TUI_CUDA_GRAPH"


def graphs_requested(device: torch.device, requested: bool | None = None) -> bool:
    """Whether decode steps on `device` run from a CUDA graph: `requested` if given, else $GPT2TUI_CUDA_GRAPH ("1"
    or unset on, "0" off). On by default: 2.9–4.0× the tokens per second of eager decoding on an H100 and an H200
    (RESULTS.md); only CUDA devices have graphs."""
    on_cuda = torch.device(device).type == "cuda"
    if requested is None:
        value = os.environ.get(ENV_VAR, "1")
        if value not in ("0", "1"):
            raise ConfigError(f"${ENV_VAR} is {value!r}; set it to 1 (decode from CUDA graphs) or 0, or unset it")
        return value == "1" and on_cuda  # a machine-wide setting: a CPU run simply has no graphs
    if requested and not on_cuda:
        raise ConfigError(f"CUDA graphs need a CUDA device, and the model is on {device}; leave cuda_graph unset")
    return requested


class _DeviceLengths:
    """The KV cache as a captured step sees it (the interface `GPT2.hidden` drives: begin, write, commit): positions
    and lengths come from the device tensor `lens`, which the step itself advances, never from host lists."""

    empty = False  # the graph decodes into a filled cache
    max_after = None  # no host bound: attention reads the whole cache, masked by `lens_after`

    def __init__(self, cache: KVCache, lens: torch.Tensor):
        self.cache = cache
        self.k, self.v = cache.k, cache.v  # (L, B, H, T_max, D)
        self.lens = lens  # (B,) int64
        self.rows = torch.arange(cache.batch_size, device=cache.device)[:, None]  # (B, 1)

    def begin(self, n: int) -> torch.Tensor:
        if n != 1:
            raise ValueError(f"a graphed decode step takes one new token per row, not {n}")
        self._pos = self.lens[:, None]  # (B, 1)
        self.lens_after = self.lens + 1  # (B,)
        return self._pos

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cache.scatter(layer, self.rows, self._pos, k, v)

    def commit(self) -> None:
        self.lens.copy_(self.lens_after)


class CUDAGraph:
    """Captures a function's kernels on a side stream and replays them (torch.cuda.CUDAGraph)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.graph = torch.cuda.CUDAGraph()

    def warm_up(self, fn) -> None:
        # On the stream the capture will use: cuBLAS keeps a handle per stream, and creating one is not capturable.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, fn) -> None:
        # thread_local: the chat app decodes in a worker thread, and the UI thread's work must not abort the capture.
        current = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
                fn()
        finally:
            # A capture that fails as it ends raises before torch.cuda.graph puts the thread's stream back, and the
            # eager steps that follow must not run on the side stream, past the caching allocator's stream tracking.
            torch.cuda.set_stream(current)

    def replay(self) -> None:
        self.graph.replay()


class GraphedDecodeStep:
    """`step(next_ids)` → logits `(B, V)`: one token per row through the model and into `cache`, like
    `model.head(model.hidden(next_ids[:, None], cache)[:, -1])`, replayed from a CUDA graph after the first call.

    The logits tensor is reused by the next step: read it (sample) before calling again. `graph` builds the capture
    object for a device (tests substitute one that runs on the CPU)."""

    def __init__(self, model, cache: KVCache, graph=None):
        B = cache.batch_size
        self.model, self.cache = model, cache
        self.ids = torch.zeros(B, 1, dtype=torch.long, device=cache.device)  # (B, 1) the graph's input
        self.lens = torch.tensor(cache.lens, dtype=torch.long, device=cache.device)  # (B,) advanced by the graph
        self.logits = torch.empty(B, model.config.vocab_size, dtype=model.dtype, device=cache.device)  # (B, V)
        self._view = _DeviceLengths(cache, self.lens)
        self._graph = (graph or CUDAGraph)(cache.device)
        self._captured = False

    def _step(self) -> None:
        h = self.model.hidden(self.ids, self._view)  # (B, 1, C)
        self.logits.copy_(self.model.head(h[:, -1]))  # (B, V)

    @torch.inference_mode()
    def __call__(self, next_ids: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        if max(cache.lens) + 1 > cache.max_len:
            raise ValueError(f"KV cache is full: {max(cache.lens)} cached + 1 new token exceed its {cache.max_len}")
        if self._graph is None or (not self._captured and _refused_on(cache.device)):
            # No graph here: the plain eager step, which advances the cache's lengths itself.
            self._graph = None
            return self.model.head(self.model.hidden(next_ids.view(-1, 1), cache)[:, -1])
        self.ids.copy_(next_ids.view(-1, 1))
        if self._captured:
            self._graph.replay()
        else:
            self._graph.warm_up(self._step)  # the real first step, run eagerly
            try:
                self._graph.capture(self._step)  # records the same kernels; runs nothing
            except RuntimeError as err:
                # Graphs are on by default, so a device or driver that refuses the capture must not end the reply:
                # the warm-up has already made this token's logits, later steps run eagerly, and so do later
                # decoders on this device (one warning, not one per reply).
                warnings.warn(f"decoding without a CUDA graph: the capture failed ({err}); set {ENV_VAR}=0 to skip "
                              "the attempt", RuntimeWarning, stacklevel=2)
                _REFUSED.add(str(cache.device))
                self._graph = None
            self._captured = True
        cache.lens = [n + 1 for n in cache.lens]
        return self.logits


# Devices whose driver refused a capture in this process: their decoders step eagerly from then on.
_REFUSED: set[str] = set()


def _refused_on(device: torch.device) -> bool:
    return str(device) in _REFUSED
