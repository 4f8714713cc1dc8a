"""What the installed package ships and how it is laid out."""

import hashlib
import subprocess
import sys
from importlib import resources

import gpt2tui


def test_native_extension_is_built_and_matches_the_package_version():
    from gpt2tui import _bpe

    assert _bpe.__version__ == gpt2tui.__version__


def test_vocabulary_and_its_licence_ship_inside_the_package():
    assets = resources.files("gpt2tui") / "assets"
    data = (assets / "gpt2.tiktoken").read_bytes()
    assert hashlib.sha256(data).hexdigest() == "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
    assert "MIT" in (assets / "LICENSE-gpt2-vocab.txt").read_text() or "Permission" in (
        assets / "LICENSE-gpt2-vocab.txt"
    ).read_text()


def test_kernels_and_training_install_under_the_gpt2tui_name():
    import gpt2tui.kernels
    import gpt2tui.training

    assert gpt2tui.kernels.__name__ == "gpt2tui.kernels" and gpt2tui.training.__name__ == "gpt2tui.training"


def test_public_api_names():
    from gpt2tui import GPT2, GPT2Config, Tokenizer, generate, load_model, stream  # noqa: F401
    from gpt2tui.generate import Decoder  # noqa: F401  the submodule stays importable

    assert callable(generate) and generate.__name__ == "generate"


def test_importing_the_package_and_the_cli_does_not_import_torch():
    code = "import gpt2tui, gpt2tui.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
