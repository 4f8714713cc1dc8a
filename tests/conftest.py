"""Shared fixtures: every test runs offline, with its own data and cache folders, on models the tests write."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub, which reads it once; `isolated_home` sets it again for each test.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from gpt2tui_testkit.hf import write_hf_dir  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the user's real models, preferences, Hugging Face cache, or the network."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # config.toml: preferences (gpt2tui/prefs.py)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GPT2TUI_ATTENTION", raising=False)
    monkeypatch.delenv("GPT2TUI_MODEL", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def hf_small_dir(tmp_path_factory) -> Path:
    """One small HF GPT-2 directory shared by the tests that only read it."""
    return write_hf_dir(tmp_path_factory.mktemp("hf") / "tiny-gpt2", seed=1)
