"""The one build: the gpt2tui packages, the pybind11 extension gpt2tui._bpe, and the `gpt2tui` command.

`kernels/` and `training/` install as `gpt2tui.kernels` and `gpt2tui.training` so that nothing generic lands in a
user's site-packages. Neither folder has an `__init__.py`, so that from the repository root `import kernels` or
`import training` can never find them instead of an installed distribution of that name (transformers imports PyPI's
`kernels`): a folder without one is a namespace portion, which never wins over a regular package. `build_py` writes
their `__init__.py` into the installed tree instead. This works in a regular install and in setuptools' strict
editable mode (a link tree, which the Makefile asks for), not in its default editable mode, which cannot map a
folder without `__init__.py` to another name. The extensions (the tokenizer's `gpt2tui._bpe` and the packed linear's
`gpt2tui._quant`) need only a C++17 compiler and pybind11: never torch.
"""

import re
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

# The installed `__init__.py` of the two folders mapped under gpt2tui (see the docstring for why they have none).
PACKAGE_INITS = {
    "gpt2tui.kernels": (
        '"""Attention ops for gpt2tui: `causal_attention`, `decode_attention` and the dispatch rule, from `ops.py`.\n\n'
        "Written by gpt2tui's setup.py: the repository's kernels/ folder has no __init__.py (README, Layout).\n"
        '"""\n\nfrom .ops import *  # noqa: F403\nfrom .ops import __all__  # noqa: F401\n'
    ),
    "gpt2tui.training": (
        '"""Training for gpt2tui: pretraining, instruction fine-tuning (full and LoRA), evaluation and plots.\n\n'
        "Written by gpt2tui's setup.py: the repository's training/ folder has no __init__.py (README, Layout).\n"
        '"""\n'
    ),
}


class build_py_with_inits(build_py):
    """build_py that also writes PACKAGE_INITS into the build. setuptools' strict editable install copies a built
    file that has no source (as it does the extension) into its link tree."""

    def _init_paths(self):
        return {package: Path(self.build_lib, *package.split("."), "__init__.py") for package in PACKAGE_INITS}

    def run(self):
        super().run()
        for package, path in self._init_paths().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PACKAGE_INITS[package], encoding="utf-8")

    def get_outputs(self, include_bytecode=1):
        return list(super().get_outputs(include_bytecode)) + [str(p) for p in self._init_paths().values()]


HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "gpt2tui" / "__init__.py").read_text(), re.M).group(1)

bpe = Pybind11Extension(
    "gpt2tui._bpe",
    sorted(glob("csrc/*.cpp")),
    depends=sorted(glob("csrc/*.h")),
    cxx_std=17,
    define_macros=[("GPT2TUI_VERSION", f'"{VERSION}"')],
    extra_compile_args=["-O3"],
)

# The packed int8/bfloat16 linear (gpt2tui/quant.py): its own module, so the tokenizer's stays small. Built for the
# baseline x86-64 like every extension here; its AVX-512 and AVX2 paths carry their own target attributes and are
# chosen at run time, so one wheel runs on any x86-64 (and the portable path everywhere else).
quant = Pybind11Extension(
    "gpt2tui._quant",
    sorted(glob("csrc/quant/*.cpp")),
    depends=sorted(glob("csrc/quant/*.h")),
    cxx_std=17,
    extra_compile_args=["-O3", "-pthread", "-Wno-maybe-uninitialized"],  # GCC 12 misreads _mm512_setzero_ps
    extra_link_args=["-pthread"],
)

SERVE = ["fastapi>=0.110", "uvicorn>=0.30"]
DATA = ["zstandard>=0.22", "pyarrow>=14", "datasets>=2.18"]  # datasets 2.18: IterableDataset.state_dict, to resume
# The lm-evaluation-harness adapter (gpt2tui/evals/lm_eval_adapter.py, `evaluate --harness`), written against 0.4.13's
# TemplateLM and TaskManager(include_defaults=).
EVAL = ["lm-eval>=0.4.13"]

setup(
    name="gpt2tui",
    version=VERSION,
    description="GPT-2 from scratch in PyTorch: pretrain, fine-tune into a chatbot, and chat in the terminal",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["gpt2tui", "gpt2tui.tui", "gpt2tui.tui.screens", "gpt2tui.tui.widgets", "gpt2tui.serve", "gpt2tui.evals", "gpt2tui.kernels", "gpt2tui.training"],
    package_dir={"gpt2tui": "gpt2tui", "gpt2tui.kernels": "kernels", "gpt2tui.training": "training"},
    package_data={"gpt2tui": ["assets/gpt2.tiktoken", "assets/LICENSE-gpt2-vocab.txt"], "gpt2tui.tui": ["app.tcss"],
                  "gpt2tui.serve": ["static/*.html", "static/*.css", "static/*.js"]},  # the chat page at /
    ext_modules=[bpe, quant],
    cmdclass={"build_ext": build_ext, "build_py": build_py_with_inits},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tiktoken>=0.7",
        "regex",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "rich>=13",
        "matplotlib>=3.7",  # training plots, drawn with the Agg backend
        # The chat app. Tested with 8.2; it streams Markdown with Markdown.get_stream, and the SVG snapshots in
        # tests/tui are drawn by this version.
        "textual>=8.2",
        "markdown-it-py>=3",  # parses a reply's code blocks for copying (gpt2tui/tui/clipboard.py); Textual needs it too
        # The plain chat's line editor: editing, history across runs, multi-line input (gpt2tui/repl_input.py).
        "prompt-toolkit>=3.0.36",
        # Writes the preferences file, config.toml (gpt2tui/prefs.py); Python's tomllib reads it.
        "tomli-w>=1.0",
        'tomli>=1.1; python_version < "3.11"',  # reads it where the standard library has no tomllib
    ],
    extras_require={
        # `gpt2tui serve`, the OpenAI-compatible server (gpt2tui/serve/): only that command imports these.
        "serve": SERVE,
        # `pretrain --data` beyond text files (training/readers.py): .zst, .parquet and hf: datasets; `finetune --data
        # hf:...`. Only the reader of each format imports its package.
        "data": DATA,
        # `evaluate --harness`: lm-evaluation-harness tasks through gpt2tui's model (gpt2tui/evals/lm_eval_adapter.py).
        "eval": EVAL,
        "dev": [
            *SERVE,
            *DATA,
            *EVAL,  # also the oracle of the evals' tests (tests/evals)
            "openai>=1.40",  # the official client: the server's tests talk to it through this
            "httpx>=0.27",
            # Drives the chat page in Debian's chromium (tests/serve/test_page.py); its own browser download is not used.
            "playwright>=1.40",
            "pytest>=8",
            "pytest-benchmark>=4",
            "pytest-textual-snapshot>=1.1",
            "hypothesis>=6",
            "transformers>=4.40",
            "trl>=1.0",  # the oracle of `gpt2tui dpo`'s loss (tests/training/test_dpo.py); never imported by gpt2tui
            # The attention kernels' tests run in Triton's interpreter on the CPU; CUDA builds of torch bring their own.
            'triton>=3.2; sys_platform == "linux"',
        ],
    },
    entry_points={"console_scripts": ["gpt2tui=gpt2tui.cli:main"]},
    zip_safe=False,
)
