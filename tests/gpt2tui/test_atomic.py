"""Atomic writes under faults: a kill between an `atomic_directory`'s two renames, and a write that fails part-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gpt2tui.atomic import atomic_directory, recover, write_atomic

# A child that writes NAME atomically and is killed (SIGKILL, no clean-up) at the chosen rename: the first moves the
# old NAME aside, the second puts the new one in.
_KILLED_AT_RENAME = r"""
import os, signal, sys
from gpt2tui.atomic import atomic_directory
target, at = sys.argv[1], int(sys.argv[2])
real, seen = os.replace, [0]
def replace(src, dst):
    seen[0] += 1
    if seen[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
with atomic_directory(target, {"weights.txt"}) as tmp:
    (tmp / "weights.txt").write_text("new")
"""


def _write(path, text):
    with atomic_directory(path, {"weights.txt"}) as tmp:
        (tmp / "weights.txt").write_text(text)


def _killed_at(target, rename: int) -> None:
    run = subprocess.run([sys.executable, "-c", _KILLED_AT_RENAME, str(target), str(rename)], capture_output=True,
                         timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_kill_between_the_two_renames_is_finished_on_the_next_start(tmp_path):
    target = tmp_path / "checkpoint"
    _write(target, "old")
    _killed_at(target, 2)
    assert not target.exists() and len(_leftovers(tmp_path)) == 2  # .checkpoint.old-PID and .checkpoint.tmp-PID
    assert recover(target) == target
    assert (target / "weights.txt").read_text() == "new" and _leftovers(tmp_path) == []


def test_a_kill_before_the_swap_keeps_the_old_version(tmp_path):
    target = tmp_path / "checkpoint"
    _write(target, "old")
    _killed_at(target, 1)  # the new one written, the old one not yet moved: the new one is not known to be whole
    assert recover(target) is None
    assert (target / "weights.txt").read_text() == "old" and _leftovers(tmp_path) == []


def test_a_kill_during_the_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "checkpoint"
    _killed_at(target, 1)
    assert recover(target) is None and not target.exists() and _leftovers(tmp_path) == []


def test_the_next_write_recovers_first(tmp_path):
    target = tmp_path / "checkpoint"
    _write(target, "old")
    _killed_at(target, 2)
    _write(target, "newer")
    assert (target / "weights.txt").read_text() == "newer" and _leftovers(tmp_path) == []


def test_a_live_writer_s_temporaries_are_left_alone(tmp_path):
    target = tmp_path / "checkpoint"
    _write(target, "old")
    os.replace(target, tmp_path / f".checkpoint.old-{os.getppid()}")  # a live process (pytest's parent) mid-swap
    (tmp_path / f".checkpoint.tmp-{os.getppid()}").mkdir()
    assert recover(target) is None and len(_leftovers(tmp_path)) == 2


def test_write_atomic_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
