"""Kernel tests run on CUDA where there is one, and otherwise in Triton's interpreter on the CPU.

The interpreter must be chosen before Triton compiles anything (it is read when `@triton.jit` decorates a kernel), so
the switch lives here, ahead of every test module's imports.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On CUDA the tests visit dozens of (length, head dim, dtype) keys; autotuning each would compile hundreds of kernel
# variants. They run one fixed block config; benchmarks/bench_attention.py tunes, and checks the tuned kernels agree.
os.environ.setdefault("GPT2TUI_TRITON_AUTOTUNE", "0")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
