"""The server, started for real on a free loopback port, serving tiny random checkpoints loaded by the real loading
code; tests talk to it with the official `openai` client (and `httpx` where a request must be malformed on purpose)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2tui_testkit.serving import Served, serve, wide_model_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return wide_model_dir(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=1)


@pytest.fixture(scope="session")
def long_dir(tmp_path_factory) -> Path:
    """A 1,024-token window: long enough that a reply is still running when a test cancels it."""
    return wide_model_dir(tmp_path_factory.mktemp("models") / "tiny-long", seed=2, context_length=1024)


@pytest.fixture(scope="module")
def server(tiny_dir) -> Served:
    """Default settings but a small prefill chunk, so that prompts are prefilled over several steps."""
    served = serve(tiny_dir, prefill_chunk=8)
    yield served
    served.stop()
