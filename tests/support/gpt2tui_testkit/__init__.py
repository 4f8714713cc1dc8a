"""What several test files (and a few benchmarks) share: model folders, data, the stand-in Triton driver, the TUI's
Pilot helpers.

pytest puts `tests/support` on sys.path (`pythonpath` in pyproject.toml), and nothing else of the repository: the tests
run in pytest's importlib mode, and no folder under tests/ is a package. This package's name is ours alone, so it can
never stand in for an installed distribution the way a generic `tests`, `kernels` or `helpers` could. A test's child
Python gets the same path from `child_env`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent.parent  # tests/support
ROOT = SUPPORT.parent.parent  # the repository


def child_env(drop: tuple[str, ...] = (), **overrides: str) -> dict[str, str]:
    """This process's environment for a child Python that imports `gpt2tui_testkit`, less `drop`, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def free_port() -> int:
    """A loopback port nobody listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
