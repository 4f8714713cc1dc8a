"""A preallocated static KV cache with per-row lengths.

One tensor pair for all layers, `(L, B, H, T_max, D)`, allocated once per generation: no concatenation, no
reallocation, and a fixed shape that CUDA graphs and kernels can rely on. Rows keep their own lengths, so a batch of
prompts of different lengths never attends to padding: each row writes its next token at its own position.

The model drives it: `begin(n)` before a forward of `n` new tokens per row, `write(layer, k, v)` in each layer,
`commit()` after. Lengths live on the host as well as the device, so no step needs a device sync to know them.

Rows as slots (the server's continuous batching, `gpt2tui/serve/scheduler.py`): a row joins by being `clear_row`ed,
prefills and decodes through `rows(start, stop)` (a view of a run of rows that shares this cache's storage and lengths,
so one forward serves only the rows that have work of that kind), and leaves by being overwritten with `move_row`.
Views take contiguous runs because a slice is a view and costs nothing, while a gather of scattered rows would copy
the whole cache every layer; the scheduler keeps its rows packed with `move_row` / `swap_rows` instead, which copy
only the filled positions of one or two rows.
"""

from __future__ import annotations

import math
import mmap

import torch


def _zeros(shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Zeros. On the CPU, in anonymous memory, which reads as zeros and takes RAM only where it is written: a cache
    sized for whole windows of many rows (the server's) costs what its rows have used, not 1.2 GB up front."""
    n = math.prod(shape)
    if torch.device(device).type != "cpu" or n == 0:
        return torch.zeros(shape, device=device, dtype=dtype)
    memory = mmap.mmap(-1, n * dtype.itemsize, flags=mmap.MAP_PRIVATE)  # the tensor keeps it alive
    return torch.frombuffer(memory, dtype=dtype, count=n).view(shape)


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        shape = (n_layers, batch_size, n_heads, max_len, head_dim)
        self.k = _zeros(shape, device, dtype)  # (L, B, H, T_max, D)
        self.v = _zeros(shape, device, dtype)  # (L, B, H, T_max, D)
        self.max_len = max_len
        self.lens: list[int] = [0] * batch_size  # valid entries per row, host copy
        self._step: tuple[int, list[int]] | None = None  # (n, lengths before) while a forward is in flight
        self._parent: tuple[KVCache, int] | None = None  # (cache, first row) for a view made by `rows`

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None) -> KVCache:
        cfg = model.config
        max_len = cfg.context_length if max_len is None else min(max_len, cfg.context_length)
        return cls(cfg.n_layers, batch_size, cfg.n_heads, max_len, cfg.head_dim, model.device, model.dtype)

    @property
    def batch_size(self) -> int:
        return len(self.lens)

    @property
    def device(self) -> torch.device:
        return self.k.device

    def reset(self) -> None:
        self.lens = [0] * self.batch_size
        self._write_back()

    def set_lengths(self, lens: list[int]) -> None:
        """Declare how many entries of each row are valid (for example the real lengths after a padded prefill)."""
        if len(lens) != self.batch_size or any(not 0 <= n <= self.max_len for n in lens):
            raise ValueError(f"lengths {lens} do not fit a cache of {self.batch_size} rows × {self.max_len} positions")
        self.lens = list(lens)
        self._write_back()

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows `start..stop-1` as a cache of their own for one forward: the same storage (what the forward writes
        lands here) and, after `commit` or `set_lengths`, the same lengths."""
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"rows {start}..{stop - 1} are not rows of a cache of {self.batch_size}")
        view = KVCache.__new__(KVCache)
        view.k = self.k[:, start:stop]  # (L, b, H, T_max, D), a view
        view.v = self.v[:, start:stop]  # (L, b, H, T_max, D), a view
        view.max_len = self.max_len
        view.lens = self.lens[start:stop]
        view._step = None
        view._parent = (self, start)
        return view

    def clear_row(self, row: int) -> None:
        """Empty one row for a new sequence; the others are untouched (stale entries past a length are never read)."""
        self.lens[row] = 0
        self._write_back()

    def move_row(self, src: int, dst: int) -> None:
        """Copy row `src` (its filled positions and its length) over row `dst`, which leaves; `src` is then free."""
        if src != dst:
            n = self.lens[src]
            self.k[:, dst, :, :n] = self.k[:, src, :, :n]
            self.v[:, dst, :, :n] = self.v[:, src, :, :n]
            self.lens[dst] = n
            self._write_back()

    def swap_rows(self, a: int, b: int) -> None:
        """Exchange two rows, contents and lengths."""
        if a != b:
            n = max(self.lens[a], self.lens[b])
            self.k[:, [a, b], :, :n] = self.k[:, [b, a], :, :n]  # the right side is a copy (advanced indexing)
            self.v[:, [a, b], :, :n] = self.v[:, [b, a], :, :n]
            self.lens[a], self.lens[b] = self.lens[b], self.lens[a]
            self._write_back()

    def _write_back(self) -> None:
        """A view's lengths are its parent's: copy them back after they change."""
        if self._parent is not None:
            parent, start = self._parent
            parent.lens[start : start + len(self.lens)] = self.lens
            parent._write_back()

    def select_rows(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (finished rows leave the batch, so the rest decode faster)."""
        index = torch.tensor(rows, device=self.device)
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self.lens = [self.lens[r] for r in rows]

    # -- the model's side ------------------------------------------------------------------------------------------

    def begin(self, n: int) -> torch.Tensor:
        """Start a forward of `n` new tokens per row; returns their positions, `(B, n)`."""
        if max(self.lens) + n > self.max_len:
            raise ValueError(
                f"KV cache is full: {max(self.lens)} cached + {n} new tokens exceed its {self.max_len} positions"
            )
        before = list(self.lens)
        self._step = (n, before)
        self.uniform = all(x == before[0] for x in before)
        self.empty = self.uniform and before[0] == 0
        self.max_after = max(before) + n
        start = torch.tensor(before, device=self.device)
        self.lens_after = start + n  # (B,) device copy for the attention ops
        self._pos = start[:, None] + torch.arange(n, device=self.device)  # (B, n)
        return self._pos

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's keys and values `(B, H, n, D)` of one layer at each row's next positions."""
        n, before = self._step
        if self.uniform:
            s = before[0]
            self.k[layer, :, :, s : s + n] = k
            self.v[layer, :, :, s : s + n] = v
        else:
            rows = torch.arange(self.batch_size, device=self.device)[:, None]  # (B, 1)
            self.scatter(layer, rows, self._pos, k, v)

    def scatter(self, layer: int, rows: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store `(B, H, n, D)` keys and values of one layer at device positions `pos` `(B, n)` of rows `(B, 1)`: no
        host value in the indexing, so a CUDA graph can capture it."""
        self.k[layer][rows, :, pos] = k.transpose(1, 2)  # indexed view is (B, n, H, D)
        self.v[layer][rows, :, pos] = v.transpose(1, 2)

    def commit(self) -> None:
        n, before = self._step
        self.lens = [x + n for x in before]
        self._step = None
        self._write_back()
