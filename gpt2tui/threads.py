"""How many threads a CPU decode runs on: as many cores as other processes leave free, re-measured as it goes.

Why: an op split over threads waits for its slowest thread. When another process holds a core, the OS gives the thread
that shares it a turn only every few milliseconds, and a decode step, a few hundred small ops, waits that long again
and again: with one busy process beside it, batch-1 decode on both of two cores ran 10× slower than on one
(benchmarks/RESULTS.md, "Threads under load"). Fewer threads than cores loses little when the machine is idle, since
one token's products are small; so the count follows the free cores.

How: over each interval, the CPU time all processes used (/proc/stat) minus this process's own (`os.times`) is what
the others took; the thread count is the cores left over, at least 1 and at most what torch was set to (the user's
`torch.set_num_threads` or $OMP_NUM_THREADS is the ceiling). torch's pool and the packed linear's (`quant.py`) both
follow `torch.set_num_threads`. $GPT2TUI_THREADS fixes the count instead; where /proc/stat is missing (not Linux)
nothing changes.
"""

from __future__ import annotations

import os
import time

import torch

ENV_VAR = "GPT2TUI_THREADS"
INTERVAL_S = 0.25  # long enough for /proc/stat's 10 ms ticks to mean something, short enough to follow a new load
FIRST_INTERVAL_S = 0.05  # the first look, over the prefill: a busy machine is seen before many slow steps
REMEMBER_S = 10.0  # a new decode soon after another starts from its count, not from the ceiling
_last: tuple[float, int, int] | None = None  # (when, ceiling, threads) of the last decision


def _cpu_ticks() -> tuple[float, float] | None:
    """Seconds of CPU all processes have used, and of all time, summed over CPUs (from /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    idle = fields[3] + fields[4]
    return (total - idle) / hz, total / hz


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ThreadGovernor:
    """Sets torch's thread count from the free cores while a CPU decode runs; `close()` restores the count."""

    def __init__(self, interval_s: float = INTERVAL_S):
        self.ceiling = torch.get_num_threads()
        self.interval_s = interval_s
        self.threads = self.ceiling
        fixed = os.environ.get(ENV_VAR)
        self.enabled = fixed is None and self.ceiling > 1 and _cpu_ticks() is not None
        if fixed is not None:
            if not fixed.isdigit() or int(fixed) < 1:
                raise ValueError(f"${ENV_VAR} is {fixed!r}; set it to a whole number of threads (1 or more), or "
                                 "unset it")
            self._set(int(fixed))
        elif self.enabled and _last is not None and time.monotonic() - _last[0] < REMEMBER_S and _last[1] == self.ceiling:
            self._set(_last[2])
        self._first = True
        self._mark()

    def _mark(self) -> None:
        self._at = time.monotonic()
        self._ticks = _cpu_ticks()
        self._own = _own_seconds()

    def _set(self, n: int) -> None:
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        self.threads = n

    def others_busy(self) -> float | None:
        """Cores' worth of CPU other processes used since the last mark (None before the interval has passed)."""
        now = time.monotonic()
        if now - self._at < (FIRST_INTERVAL_S if self._first else self.interval_s) or self._ticks is None:
            return None
        ticks = _cpu_ticks()
        if ticks is None:
            return None
        busy = ticks[0] - self._ticks[0]
        own = _own_seconds() - self._own
        return max(0.0, (busy - own) / (now - self._at))

    def tick(self) -> None:
        """Call once per decode step: every interval, re-measure and set the thread count."""
        if not self.enabled:
            return
        others = self.others_busy()
        if others is None:
            return
        global _last
        free = _usable_cores() - others
        self._set(max(1, min(self.ceiling, int(free + 0.5))))
        _last = (time.monotonic(), self.ceiling, self.threads)
        self._first = False
        self._mark()

    def close(self) -> None:
        self._set(self.ceiling)


class _NoGovernor:
    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


def governor_for(device: torch.device) -> ThreadGovernor | _NoGovernor:
    """A governor for a decode on `device`: only the CPU's threads are shared with other processes."""
    return ThreadGovernor() if device.type == "cpu" else _NoGovernor()
