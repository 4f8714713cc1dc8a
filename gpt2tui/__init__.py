"""gpt2tui: GPT-2 from scratch, trained, fine-tuned and chatted with in the terminal.

    from gpt2tui import load_model, stream
    model, tokenizer = load_model("gpt2")
    for delta in stream(model, tokenizer, "Hello", max_new_tokens=50, temperature=0.8, top_k=40):
        print(delta, end="", flush=True)
"""

import importlib
import os
import pkgutil
import sys
import types

__version__ = "0.1.0"

# torch's OpenMP threads spin while they wait for work (libgomp's default, "active"). On a machine whose cores other
# processes also use, the spinning thread takes the core the working one needs: with one busy process beside it, batch-1
# decode of the 124M model on two threads ran at 10.2 tok/s against 22.3 on one. Passive waiting keeps two threads level
# with one under load, and costs nothing measurable when the machine is idle (benchmarks/RESULTS.md, "Threads under
# load"). libgomp reads this once, when torch loads it: set here, before gpt2tui imports torch, and never over a value
# the user chose. A program that imported torch first keeps torch's default.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Run from a checkout's root, Python finds this folder before the installed package (the working directory comes first
# on sys.path), but `gpt2tui.kernels` and `gpt2tui.training` exist only in the installed tree (kernels/ and training/
# sit beside this folder: README, "Layout"), and so does the built `gpt2tui._bpe` after a regular install.
# extend_path appends every other `gpt2tui` folder on sys.path, so they are found there; this folder still comes first.
__path__ = pkgutil.extend_path(__path__, __name__)

# Loaded on first use: `gpt2tui --help` and the app's first frame should not wait for torch to import.
_EXPORTS = {
    "GPT2": "gpt2tui.model",
    "GPT2Config": "gpt2tui.config",
    "KVCache": "gpt2tui.cache",
    "Tokenizer": "gpt2tui.tokenizer",
    "SamplingParams": "gpt2tui.generate",
    "generate": "gpt2tui.generate",
    "stream": "gpt2tui.generate",
    "load_model": "gpt2tui.weights",
    "load_weights": "gpt2tui.weights",
    "save_checkpoint": "gpt2tui.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpt2tui' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


class _Package(types.ModuleType):
    """`gpt2tui.generate` names both a submodule and the public function. Importing the submodule makes Python set
    the package attribute to the module; this keeps the function there instead (the module stays importable with
    `from gpt2tui.generate import ...`)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "generate" and isinstance(value, types.ModuleType):
            value = value.generate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
