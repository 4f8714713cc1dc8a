"""The server's tests and benchmark: tiny models saved as real checkpoints, and a server started for real (uvicorn in
a thread on a free loopback port) with a client for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from openai import OpenAI

from gpt2tui import GPT2, GPT2Config, save_checkpoint
from gpt2tui.serve.engine import Engine
from gpt2tui.serve.server import ServerThread
from gpt2tui.serve.settings import ServeSettings

TINY = dict(n_layers=2, n_heads=4, emb_dim=64, context_length=128, drop_rate=0.0)


def wide_model_dir(path: Path, seed: int = 0, **config) -> Path:
    """A tiny random GPT-2 checkpoint with a wide init (std 0.1, as `gpt2tui_testkit.hf.hf_gpt2`): its logits are
    spread, so greedy decoding has no near-ties that batching's float rounding could flip."""
    torch.manual_seed(seed)
    model = GPT2(GPT2Config(**{**TINY, **config}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.normal_(0.0, 0.1)
    save_checkpoint(model, path)
    return path


class Served:
    """A running server: `url`, `client()`, `engine`, `stop()`."""

    def __init__(self, engine: Engine, settings: ServeSettings):
        self.engine = engine
        self.thread = ServerThread(engine, settings).start()
        self.url = self.thread.base_url

    def client(self, api_key: str = "unused", **kwargs) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=api_key, **kwargs)

    def stop(self) -> None:
        self.thread.stop()


def serve(
    model_dir: Path, api_key: str | None = None, cors_origins: tuple[str, ...] = (), **engine
) -> Served:
    """Serve `model_dir` on a free loopback port; `engine` holds `Engine.load`'s keywords (max_batch, ...)."""
    settings = ServeSettings(port=0, api_key=api_key, cors_origins=cors_origins)
    return Served(Engine.load(str(model_dir), device="cpu", **engine), settings)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a state the server reaches on its own (never a measure of speed: the limit is for hung tests)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the server never reached the expected state")
        time.sleep(0.01)
