"""The same pretraining command under torchrun with two CPU processes (gloo) matches one process step for step."""

import os
import subprocess
import sys

import pytest

from gpt2tui_testkit import free_port
from gpt2tui_testkit.training import metrics, pretrain_argv, run_cli, write_story


def test_torchrun_two_processes_match_one(tmp_path, capsys):
    story = write_story(tmp_path / "story.txt")
    steps = ["--max-steps", "4", "--eval-every", "2", "--seed", "7", "--dropout", "0"]
    # One process with batch 4 sees the same global batch as two processes with batch 2 each.
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "single", *steps))
    assert code == 0, err
    argv = [str(a) for a in pretrain_argv(story, tmp_path / "ddp", *steps)]
    argv[argv.index("--batch-size") + 1] = "2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", "-m", "gpt2tui.cli", *argv],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    assert [r["step"] for r in ddp] == [1, 2, 3, 4]
    for a, b in zip(single, ddp, strict=False):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        assert b.get("val_loss") == pytest.approx(a.get("val_loss"), abs=1e-4)
    assert (tmp_path / "ddp" / "checkpoint" / "trainer_state.json").is_file()
    assert not [p for p in (tmp_path / "ddp").iterdir() if p.name.startswith(".")]
