"""What the installed package ships and how it is laid out."""

import hashlib
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import gpt2tui

ROOT = Path(__file__).resolve().parents[1]


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
    assert gpt2tui.kernels.causal_attention is gpt2tui.kernels.ops.causal_attention  # the installed __init__.py


# -- nothing of the repository stands in for an installed distribution (README, "Layout") ------------------------------


def _from_the_root(code: str) -> subprocess.CompletedProcess:
    """`python -c code` with the repository root as the working directory, which `python -c` puts first on sys.path."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_transformers_and_gpt2tui_kernels_import_from_the_repository_root():
    run = _from_the_root("import transformers, transformers.integrations.hub_kernels, gpt2tui, gpt2tui.kernels")
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("name", ["kernels", "training", "tests", "benchmarks", "tools", "csrc"])
def test_a_top_level_folder_is_never_imported_in_place_of_a_distribution(name):
    """Whatever is installed under `name` (transformers brings PyPI's `kernels`), our folder never wins: at most it is
    a namespace portion, which Python takes only when no regular package of that name exists anywhere on the path."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.find_spec({name!r})\n"
        "print('absent' if spec is None else 'namespace' if spec.origin in (None, 'namespace') else spec.origin)"
    )
    run = _from_the_root(code)
    assert run.returncode == 0, run.stderr[-3000:]
    found = run.stdout.strip()
    assert found in ("absent", "namespace") or not Path(found).resolve().is_relative_to(ROOT / name), found


def test_hugging_face_kernels_wins_when_installed():
    pytest.importorskip("kernels")  # a dependency of transformers >= 5.25; pinned in constraints.txt
    run = _from_the_root("import kernels; print(kernels.__file__)")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not Path(run.stdout.strip()).resolve().is_relative_to(ROOT / "kernels"), run.stdout


def test_the_suite_itself_imports_transformers_hub_kernels():
    import transformers.integrations.hub_kernels  # noqa: F401

    ours = ROOT / "kernels"
    assert "kernels" not in sys.modules or not Path(sys.modules["kernels"].__file__ or "/").resolve().is_relative_to(ours)


def test_no_folder_but_the_package_is_a_regular_package():
    """An `__init__.py` in a top-level folder, or anywhere under tests/ (run in pytest's importlib mode), would make it a
    regular package that the repository root puts ahead of site-packages."""
    inits = [p.relative_to(ROOT) for p in ROOT.glob("*/__init__.py") if p.parent.name != "gpt2tui"]
    inits += [p.relative_to(ROOT) for p in (ROOT / "tests").rglob("__init__.py") if "gpt2tui_testkit" not in p.parts]
    assert inits == []


def test_public_api_names():
    from gpt2tui import GPT2, GPT2Config, Tokenizer, generate, load_model, stream  # noqa: F401
    from gpt2tui.generate import Decoder  # noqa: F401  the submodule stays importable

    assert callable(generate) and generate.__name__ == "generate"


def test_importing_the_package_and_the_cli_does_not_import_torch():
    code = "import gpt2tui, gpt2tui.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_importing_gpt2tui_first_makes_torch_s_threads_wait_passively():
    """Spinning OpenMP threads halve decode speed when another process uses a core (benchmarks/bench_threads.py)."""
    code = "import os, gpt2tui, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.stdout.strip() == "PASSIVE", run.stderr
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert run.stdout.strip() == "ACTIVE", run.stderr  # the user's choice stands
    torch_first = "import os, torch, gpt2tui; print(os.environ.get('OMP_WAIT_POLICY'))"
    run = subprocess.run([sys.executable, "-c", torch_first], capture_output=True, text=True, env=env, timeout=300)
    assert run.stdout.strip() == "None", run.stderr  # too late to matter: not pretended
