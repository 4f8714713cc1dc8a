"""`gpt2tui pretrain` end to end on tiny models: it learns, resumes exactly, survives Ctrl+C, refuses bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from gpt2tui import load_model
from gpt2tui.training import data as data_module
from gpt2tui.training import loop
from gpt2tui.training.loop import TrainConfig
from gpt2tui_testkit.training import metrics, pretrain_argv, run_cli, tiny_model_dir, write_story


@pytest.fixture
def story(tmp_path):
    return write_story(tmp_path / "story.txt")


def no_temp_dirs(out):
    return [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_pretraining_overfits_a_small_text(tmp_path, story, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "40", "--lr", "1e-2",
                                                  "--warmup-steps", "4", "--eval-every", "20"))
    assert code == 0, err
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert rows[0]["train_loss"] > 10.0 and rows[-1]["train_loss"] < 2.5
    assert "val_loss" in rows[19] and "val_loss" in rows[-1] and "val_loss" not in rows[5]
    ckpt = out / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} == {"config.json", "model.safetensors", "optimizer.pt",
                                                "trainer_state.json"}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 40 and state["micro_batches_done"] == 40
    model, _ = load_model(out, device="cpu")  # OUT itself is a loadable model
    assert model.config.n_layers == 2 and model.config.context_length == 32
    assert no_temp_dirs(out) == []


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, story, capsys, monkeypatch):
    # Dropout on and two micro-batches per step: the RNG state and the accumulation must both be restored.
    common = ["--max-steps", "8", "--dropout", "0.1", "--grad-accum", "2", "--eval-every", "4", "--save-every", "3"]
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "full", *common))
    assert code == 0, err

    real = data_module.PretrainData.train_batch

    def interrupt_at_step_5(self, k, rank=0, world=1):
        if k == 5 * 2 + 1:  # the second micro-batch of step 6
            raise KeyboardInterrupt
        return real(self, k, rank, world)

    monkeypatch.setattr(data_module.PretrainData, "train_batch", interrupt_at_step_5)
    part = tmp_path / "part"
    code, _, err = run_cli(capsys, *pretrain_argv(story, part, *common))
    assert code == 130
    assert "interrupted" in err and "--resume" in err
    state = json.loads((part / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 5 and (part / "checkpoint" / "optimizer.pt").is_file()
    assert no_temp_dirs(part) == []
    monkeypatch.setattr(data_module.PretrainData, "train_batch", real)

    code, _, err = run_cli(capsys, *pretrain_argv(story, part, *common, "--resume"))
    assert code == 0, err
    full, resumed = metrics(tmp_path / "full"), metrics(part)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(full, resumed, strict=False):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6), a["step"]
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), abs=1e-6)


def test_resume_refuses_another_config_and_needs_a_checkpoint(tmp_path, story, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--resume", "--max-steps", "2"))
    assert code == 1 and "nothing to resume" in err
    assert run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))[0] == 0
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))
    assert code == 1 and "--resume" in err  # an existing run is never overwritten silently
    argv = pretrain_argv(story, out, "--resume", "--max-steps", "4")
    argv[argv.index("--n-layers") + 1] = "3"
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and "n_layers=2" in err and "n_layers=3" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--resume", "--max-steps", "4", "--batch-size", "2"))
    assert code == 1 and "batch_size" in err
    shards = {p.name: p.read_bytes() for p in (out / "tokens").iterdir()}
    other = write_story(tmp_path / "other.txt", repeat=5)
    code, _, err = run_cli(capsys, *pretrain_argv(other, out, "--resume", "--max-steps", "4"))
    assert code == 1 and "its own data" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (out / "tokens").iterdir()} == shards  # refused before re-tokenising
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 2


def test_bad_input_gives_one_line_and_no_checkpoint(tmp_path, story, capsys):
    base = tiny_model_dir(tmp_path / "base")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "pretrain", "--data", story, "--out", out, "--init", base,
                           "--context-length", "128", "--max-steps", "1")
    assert code == 1 and "--context-length 128" in err and "64" in err
    (tmp_path / "blank.txt").write_text("\n \n")
    code, _, err = run_cli(capsys, *pretrain_argv(tmp_path / "blank.txt", out, "--max-steps", "1"))
    assert code == 1 and "empty" in err
    code, _, err = run_cli(capsys, *pretrain_argv(tmp_path / "nothing*.txt", out, "--max-steps", "1"))
    assert code == 1 and "matches no files" in err
    for e in (err,):
        assert "Traceback" not in e and len(e.strip().splitlines()) == 1
    assert not (out / "checkpoint").exists()


def test_a_batch_too_large_for_memory_is_caught_with_advice(tmp_path, story, capsys, monkeypatch):
    from gpt2tui.model import GPT2

    def oom(self, *a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(GPT2, "forward", oom)
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "run", "--max-steps", "2"))
    assert code == 1 and "does not fit in memory" in err and "--batch-size" in err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_batch_whose_activations_cannot_fit_is_refused_before_the_os_kills_the_run(tmp_path, story, capsys,
                                                                                      monkeypatch):
    # 4 sequences of 32 tokens through the test preset: more activations than the 10 KiB "free" here.
    monkeypatch.setattr(loop, "_available_memory", lambda: 10 * 2**10)
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "run", "--max-steps", "2"))
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "a batch of 4 sequences of 32 tokens needs at least" in err
    assert "for the activations its backward keeps, and 10 KiB" in err
    assert "--batch-size" in err and "--grad-accum" in err
    assert not (tmp_path / "run" / "checkpoint").exists()
    monkeypatch.setattr(loop, "_available_memory", lambda: None)  # a system that does not say: no check
    assert run_cli(capsys, *pretrain_argv(story, tmp_path / "run2", "--max-steps", "1"))[0] == 0


def test_schedule_warms_up_then_decays_to_a_tenth():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10)
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


# -- faults: a kill between a checkpoint's two renames, a half-written metrics line, a full disk -------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resume_after_a_kill_between_the_checkpoint_s_renames(tmp_path, story, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))[0] == 0
    # What a process killed between `checkpoint` → `.checkpoint.old-PID` and `.checkpoint.tmp-PID` → `checkpoint`
    # leaves: no checkpoint/, the previous one aside, the complete new one beside it.
    pid = _dead_pid()
    shutil.copytree(out / "checkpoint", out / f".checkpoint.old-{pid}")
    os.replace(out / "checkpoint", out / f".checkpoint.tmp-{pid}")
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--resume", "--max-steps", "4"))
    assert code == 0, err
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4] and no_temp_dirs(out) == []


def test_a_half_written_metrics_line_does_not_break_resume(tmp_path, story, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))[0] == 0
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "train_lo')  # a kill or a full disk in the middle of a line
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--resume", "--max-steps", "3"))
    assert code == 0, err
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]


def test_a_full_disk_while_training_names_the_file(tmp_path, story, capsys, monkeypatch):
    class FullDisk:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(28, "No space left on device")

    real_open = open
    monkeypatch.setattr(loop, "open", lambda path, *a, **k: FullDisk() if str(path).endswith("metrics.jsonl")
                        else real_open(path, *a, **k), raising=False)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))
    assert code == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "metrics.jsonl" in line and "No space left on device" in line, err


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, where this machine lets the tests mount one (as root, in CI here); skipped elsewhere."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        made = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                                    capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        made = False
    if not made:
        pytest.skip("a small tmpfs cannot be mounted here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_real_full_disk_while_saving_a_checkpoint_names_it(tmp_path, story, capsys, small_disk):
    """safetensors and torch.save raise their own errors on a full disk (torch's: "unexpected pos ..."): the run
    ends with one line naming the checkpoint, and leaves no half-written one."""
    out = small_disk / "run"
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(out / "checkpoint") in line and "No space left on device" in line
    assert not (out / "checkpoint").exists() and no_temp_dirs(out) == []
