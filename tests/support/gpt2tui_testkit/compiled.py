"""A kernel compiled for a GPU without one: Triton ships ptxas, so the IR and PTX of an sm_90 build can be read here.

What the interpreter cannot check (how Triton lowers a kernel: what it fuses, which memory order an atomic gets) can
be checked in that text. The compile runs in a fresh process, because the kernels of this one were decorated for the
interpreter (tests/kernels/conftest.py).
"""

import subprocess
import sys

import pytest

from . import child_env

_SCRIPT = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gpt2tui.kernels import {module}
fn = {module}.{kernel}
types, const, stage = {types!r}, {const!r}, {stage!r}
sig = {{n: "constexpr" if n in const else types.get(n, "i32") for n in fn.arg_names}}
src = ASTSource(fn, sig, constexprs={{(fn.arg_names.index(n),): v for n, v in const.items()}})
sys.stdout.write(triton.compile(src, target=GPUTarget("cuda", 90, 32), options={{"num_warps": 4}}).asm[stage])
"""


def sm90(module: str, kernel: str, types: dict[str, str], const: dict, stage: str) -> str:
    """`stage` ("ttgir", "ptx", ...) of `gpt2tui.kernels.<module>.<kernel>` built for sm_90: arguments not in `types`
    (pointer and float types) or `const` (constexpr values) are int32. Skips the test where Triton cannot build."""
    script = _SCRIPT.format(module=module, kernel=kernel, types=types, const=const, stage=stage)
    env = child_env(drop=("TRITON_INTERPRET",))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        if "CompilationError" in run.stderr:  # the kernel itself (or the types given for it) does not compile
            raise AssertionError(run.stderr[-3000:])
        pytest.skip(f"cannot compile for sm_90 here: {run.stderr.strip().splitlines()[-1:]}")
    return run.stdout
