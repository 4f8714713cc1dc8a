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
