"""The one build: the gpt2tui packages, the pybind11 extension gpt2tui._bpe, and the `gpt2tui` command.

`kernels/` and `training/` install as `gpt2tui.kernels` and `gpt2tui.training` so that nothing generic lands in a
user's site-packages. The extension needs only a C++17 compiler and pybind11: never torch.
"""

import re
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

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

setup(
    name="gpt2tui",
    version=VERSION,
    description="GPT-2 from scratch in PyTorch: pretrain, fine-tune into a chatbot, and chat in the terminal",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["gpt2tui", "gpt2tui.tui", "gpt2tui.tui.screens", "gpt2tui.tui.widgets", "gpt2tui.kernels", "gpt2tui.training"],
    package_dir={"gpt2tui": "gpt2tui", "gpt2tui.kernels": "kernels", "gpt2tui.training": "training"},
    package_data={"gpt2tui": ["assets/gpt2.tiktoken", "assets/LICENSE-gpt2-vocab.txt"], "gpt2tui.tui": ["app.tcss"],
                  "gpt2tui.kernels": ["csrc/*.cpp"]},
    ext_modules=[bpe],
    cmdclass={"build_ext": build_ext},
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
        # Builds the attention's C++ autograd node on a CUDA machine, on first use (kernels/native.py).
        'ninja; sys_platform == "linux"',
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-benchmark>=4",
            "pytest-textual-snapshot>=1.1",
            "hypothesis>=6",
            "transformers>=4.40",
            # The attention kernels' tests run in Triton's interpreter on the CPU; CUDA builds of torch bring their own.
            'triton>=3.2; sys_platform == "linux"',
        ],
    },
    entry_points={"console_scripts": ["gpt2tui=gpt2tui.cli:main"]},
    zip_safe=False,
)
