"""`make upgrade-deps` (tools/upgrade_deps.py): what it turns pip's and pytest's output into, and the pins on main."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("upgrade_deps", ROOT / "tools" / "upgrade_deps.py")
upgrade_deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(upgrade_deps)

FREEZE = """\
annotated-types==0.8.0
-e git+https://example.invalid/gpt2tui.git@abc#egg=gpt2tui
gpt2tui==0.1.0
some-local @ file:///tmp/some_local-1.0-py3-none-any.whl
torch==2.13.0+cpu
Typing_Extensions==4.16.0
"""


def test_a_freeze_becomes_exact_pins_without_the_project_or_local_labels():
    pins = upgrade_deps.constraints_from_freeze(FREEZE)
    assert pins == {
        "annotated-types": "annotated-types==0.8.0",
        "torch": "torch==2.13.0",
        "typing-extensions": "Typing_Extensions==4.16.0",
    }


def test_rendered_pins_read_back_the_same():
    pins = upgrade_deps.constraints_from_freeze(FREEZE)
    text = upgrade_deps.render(pins, "2026-12-04", "3.11.7")
    assert text.startswith("# ") and "2026-12-04, Python 3.11.7" in text
    assert upgrade_deps.constraints_from_freeze(text) == pins


def test_changes_name_each_package_that_moved():
    old = {"a": "a==1", "b": "b==2", "c": "c==3"}
    new = {"a": "a==1", "b": "b==2.1", "d": "d==4"}
    assert upgrade_deps.changes(old, new) == ["  b: 2 -> 2.1", "  c: 3 -> (removed)", "  d: (none) -> 4"]


def test_failing_tests_are_read_from_pytest_s_summary():
    out = (
        "..F.E\n=========================== short test summary info ============================\n"
        "FAILED tests/gpt2tui/test_model.py::test_logits_match_transformers[64x2] - ImportError: cannot\n"
        "ERROR tests/gpt2tui/test_weights.py::test_missing_weights_file - ImportError: x\n"
        "1 failed, 3 passed, 1 error in 1.00s\n"
    )
    assert upgrade_deps.failed_tests(out) == [
        "tests/gpt2tui/test_model.py::test_logits_match_transformers[64x2]",
        "tests/gpt2tui/test_weights.py::test_missing_weights_file",
    ]


def test_the_constraints_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "constraints.txt"
    target.write_text("old\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        upgrade_deps.write_atomically(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["constraints.txt"]
    upgrade_deps.write_atomically(target, "new\n")
    assert target.read_text() == "new\n"


def test_the_constraints_on_main_are_exact_and_pin_the_test_oracles():
    pins = upgrade_deps.read_constraints(ROOT / "constraints.txt")
    text = (ROOT / "constraints.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s+]*", line) for line in lines), lines
    # The oracles the suite compares against, and torch at the Makefile's pin.
    assert {"transformers", "tiktoken", "torch", "triton", "pytest", "textual"} <= set(pins)
    makefile_torch = re.search(r"^TORCH\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert pins["torch"] == makefile_torch


def _make_venv_dir(cmd) -> None:
    if cmd[1:3] == ["-m", "venv"]:
        Path(cmd[-1]).mkdir(parents=True)


class _FakeRun:
    """Stands in for subprocess.run: the venv and pip steps succeed, pytest prints `suite` and exits `code`, and
    `pip freeze` prints `freeze`."""

    def __init__(self, suite: str, code: int, freeze: str = ""):
        self.suite, self.code, self.freeze, self.calls = suite, code, freeze, []

    def __call__(self, cmd, **kwargs):
        import subprocess

        self.calls.append(cmd)
        _make_venv_dir(cmd)
        if "pytest" in cmd:
            return subprocess.CompletedProcess(cmd, self.code, stdout=self.suite)
        if "freeze" in cmd:
            return subprocess.CompletedProcess(cmd, 0, stdout=self.freeze)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """upgrade_deps with its venv and constraints under tmp_path."""
    monkeypatch.setattr(upgrade_deps, "ROOT", tmp_path)
    monkeypatch.setattr(upgrade_deps, "VENV", tmp_path / ".venv-upgrade")
    (tmp_path / "constraints.txt").write_text("# pins\nrich==15.0.0\ntorch==2.13.0\n")
    return tmp_path


def test_a_red_suite_leaves_the_constraints_and_names_what_broke(sandbox, monkeypatch, capsys):
    suite = "..F\nFAILED tests/gpt2tui/test_model.py::test_logits_match_transformers[64x2] - ImportError\n1 failed, 2 passed\n"
    fake = _FakeRun(suite, 1)
    monkeypatch.setattr(upgrade_deps.subprocess, "run", fake)
    assert upgrade_deps.main([]) == 1
    err = capsys.readouterr().err
    assert "broke: tests/gpt2tui/test_model.py::test_logits_match_transformers[64x2]" in err
    assert "constraints.txt is unchanged" in err
    assert (sandbox / "constraints.txt").read_text() == "# pins\nrich==15.0.0\ntorch==2.13.0\n"
    assert not any("freeze" in cmd for cmd in fake.calls)


def test_a_green_suite_rewrites_the_constraints_and_lists_the_changes(sandbox, monkeypatch, capsys):
    fake = _FakeRun("...\n3 passed in 1.00s\n", 0, freeze="rich==15.1.0\ntorch==2.13.0+cpu\ngpt2tui==0.1.0\n")
    monkeypatch.setattr(upgrade_deps.subprocess, "run", fake)
    assert upgrade_deps.main([]) == 0
    assert upgrade_deps.read_constraints(sandbox / "constraints.txt") == {"rich": "rich==15.1.0",
                                                                           "torch": "torch==2.13.0"}
    assert "rich: 15.0.0 -> 15.1.0" in capsys.readouterr().out


def test_a_failed_install_leaves_the_constraints(sandbox, monkeypatch, capsys):
    import subprocess

    def no_registry(cmd, **kwargs):
        _make_venv_dir(cmd)
        failing = "pip" in cmd and "install" in cmd
        return subprocess.CompletedProcess(cmd, 1 if failing else 0, stdout="", stderr="")

    monkeypatch.setattr(upgrade_deps.subprocess, "run", no_registry)
    assert upgrade_deps.main([]) == 1
    assert "failed" in capsys.readouterr().err
    assert (sandbox / "constraints.txt").read_text() == "# pins\nrich==15.0.0\ntorch==2.13.0\n"
