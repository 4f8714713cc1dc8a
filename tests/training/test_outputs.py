"""Outputs never destroy what gpt2tui did not write, unwritable outputs fail before the work, and a damaged or
finished run says so in one line instead of a traceback."""

import json
import os
import stat

import pytest
import torch

from gpt2tui import GPT2, GPT2Config
from gpt2tui.atomic import MODEL_DIR_FILES, atomic_directory, check_replaceable
from gpt2tui.errors import OutputInTheWayError
from gpt2tui.training.loop import CHECKPOINT
from gpt2tui.weights import models_dir, save_checkpoint
from gpt2tui_testkit.training import (
    instruction_records,
    metrics,
    pretrain_argv,
    run_cli,
    tiny_model_dir,
    write_jsonl,
    write_story,
)


@pytest.fixture
def story(tmp_path):
    return write_story(tmp_path / "story.txt")


def one_line_error(code, err, *words):
    """Exit 1 and a last line "error: ..." with `words` (progress lines before it are fine; a traceback is not)."""
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    for w in words:
        assert w in line, (w, line)


def user_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    (path / "sub").mkdir()
    return path


# -- the directory writer ------------------------------------------------------------------------------------------


def test_atomic_directory_replaces_its_own_output_and_nothing_else(tmp_path):
    model = tmp_path / "model"
    for _ in range(2):  # the second write replaces the first
        with atomic_directory(model, MODEL_DIR_FILES) as tmp:
            (tmp / "config.json").write_text("{}")
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(OutputInTheWayError, match="thesis.txt"):
        with atomic_directory(mine, MODEL_DIR_FILES) as tmp:
            pytest.fail("the block must not run")
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(OutputInTheWayError, match="is a file"):
        check_replaceable(tmp_path / "notes.txt", MODEL_DIR_FILES, "--out")
    assert (mine / "thesis.txt").read_text() == "four years of work" and (tmp_path / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model", "notes.txt"]  # no temporaries left


def test_a_relative_parent_is_judged_by_what_it_holds(tmp_path, monkeypatch):
    user_folder(tmp_path / "home")
    monkeypatch.chdir(tmp_path / "home" / "sub")
    with pytest.raises(OutputInTheWayError, match="thesis.txt"):
        check_replaceable("..", MODEL_DIR_FILES, "--out")


# -- finetune ------------------------------------------------------------------------------------------------------


def finetune(capsys, tmp_path, out, *extra):
    base = tmp_path / "base" if (tmp_path / "base").exists() else tiny_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "d.jsonl", instruction_records())
    return run_cli(capsys, "finetune", "--data", data, "--base", base, "--out", out, "--epochs", "1",
                   "--batch-size", "8", "--test-responses", "0", *extra)


def test_finetune_never_replaces_a_folder_or_file_it_did_not_write(tmp_path, capsys):
    folder = user_folder(tmp_path / "docs")
    code, _, err = finetune(capsys, tmp_path, folder)
    one_line_error(code, err, "thesis.txt", "--out")
    (tmp_path / "precious.txt").write_text("keep")
    code, _, err = finetune(capsys, tmp_path, tmp_path / "precious.txt")
    one_line_error(code, err, "is a file")
    code, _, err = finetune(capsys, tmp_path, "")
    one_line_error(code, err, "--out is empty")
    assert (folder / "thesis.txt").read_text() == "four years of work" and (folder / "sub").is_dir()
    assert (tmp_path / "precious.txt").read_text() == "keep"
    assert not models_dir().exists() or not any(models_dir().iterdir())


def test_finetune_over_its_base_run_is_refused_but_over_its_own_model_is_a_rewrite(tmp_path, capsys, story):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, *pretrain_argv(story, run, "--max-steps", "1"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "finetune", "--data", write_jsonl(tmp_path / "d.jsonl", instruction_records()),
                           "--base", run, "--out", run, "--epochs", "1", "--test-responses", "0")
    one_line_error(code, err, CHECKPOINT, "tokens")
    assert (run / CHECKPOINT / "trainer_state.json").is_file()
    out = tmp_path / "bot"
    for i in range(2):  # a second run (its own run directory) writes over the first one's model
        code, _, err = finetune(capsys, tmp_path, out, "--run-dir", tmp_path / f"ft-run-{i}")
        assert code == 0, err
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


def test_finetune_says_when_the_context_leaves_no_example(tmp_path, capsys):
    code, _, err = finetune(capsys, tmp_path, tmp_path / "bot", "--context-length", "8")
    assert code == 1 and "no training example has a response within 8 tokens" in " ".join(err.split())
    assert "Traceback" not in err


# -- pretrain ------------------------------------------------------------------------------------------------------


def test_pretrain_never_replaces_what_it_did_not_write(tmp_path, capsys, story):
    docs = user_folder(tmp_path / "docs")
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "run", "--max-steps", "1", "--tokens-dir", docs))
    one_line_error(code, err, "thesis.txt", "--tokens-dir")
    model = tiny_model_dir(tmp_path / "model")  # a saved model, not a run: its config.json is a real file
    code, _, err = run_cli(capsys, *pretrain_argv(story, model, "--max-steps", "1"))
    one_line_error(code, err, "config.json", "--out")
    (tmp_path / "afile").write_text("keep")
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "afile", "--max-steps", "1"))
    one_line_error(code, err, "is a file")
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "afile" / "run", "--max-steps", "1"))
    one_line_error(code, err, "cannot write in", "--out")
    assert (docs / "thesis.txt").is_file() and (tmp_path / "afile").read_text() == "keep"
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("state, words", [
    ([], "damaged"),
    ({"version": 1}, "damaged"),
    ({"run": {}, "step": "x", "rng": []}, "damaged"),
    ({"run": {}, "step": -3, "rng": []}, "damaged"),
])
def test_a_damaged_trainer_state_is_one_line_and_keeps_the_metrics(tmp_path, capsys, story, state, words):
    out = tmp_path / "run"
    assert run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))[0] == 0
    before = (out / "metrics.jsonl").read_text()
    (out / CHECKPOINT / "trainer_state.json").write_text(json.dumps(state))
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "4", "--resume"))
    one_line_error(code, err, words)
    assert (out / "metrics.jsonl").read_text() == before


def test_an_empty_optimizer_file_is_reported_as_damage(tmp_path, capsys, story):
    out = tmp_path / "run"
    assert run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))[0] == 0
    (out / CHECKPOINT / "optimizer.pt").write_bytes(b"")
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "4", "--resume"))
    one_line_error(code, err, "is damaged")


def test_resuming_a_finished_run_asks_for_more_steps(tmp_path, capsys, story):
    out = tmp_path / "run"
    assert run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "3"))[0] == 0
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2", "--resume"))
    one_line_error(code, err, "at step 3 already", "raise --max-steps above 3")
    assert len(metrics(out)) == 3


def test_a_diverged_run_stops_without_saving_nan_weights(tmp_path, capsys, story, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "2"))[0] == 0
    saved = (out / CHECKPOINT / "model.safetensors").read_bytes()
    real = torch.nn.functional.cross_entropy

    def nan_loss(*args, **kwargs):  # what a too-high learning rate ends in
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_loss)
    import gpt2tui.model  # the training step's loss is the fused one (kernels/cross_entropy.py)

    real_fused = gpt2tui.model.linear_cross_entropy

    def nan_fused(*args, **kwargs):
        out = real_fused(*args, **kwargs)
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")

    monkeypatch.setattr(gpt2tui.model, "linear_cross_entropy", nan_fused)
    code, _, err = run_cli(capsys, *pretrain_argv(story, out, "--max-steps", "4", "--resume"))
    one_line_error(code, err, "diverged at step 3", "Lower --lr")
    assert (out / CHECKPOINT / "model.safetensors").read_bytes() == saved
    assert json.loads((out / CHECKPOINT / "trainer_state.json").read_text())["step"] == 2


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--weight-decay", "inf"), ("--seed", str(2**70))])
def test_impossible_numbers_are_refused_by_the_parser(tmp_path, capsys, story, flag, value):
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, *pretrain_argv(story, tmp_path / "run", "--max-steps", "1", flag, value))
    assert e.value.code == 2 and flag in capsys.readouterr().err


# -- evaluate ------------------------------------------------------------------------------------------------------


def test_evaluate_checks_its_metrics_file_and_output_before_evaluating(tmp_path, capsys, story):
    model = tiny_model_dir(tmp_path / "model")
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", story, "--out", tmp_path / "ev",
                           "--metrics", tmp_path / "missing.jsonl")
    one_line_error(code, err, "--metrics", "no such file")
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", story, "--out", tmp_path / "ev",
                           "--metrics", tmp_path / "garbage.bin")
    one_line_error(code, err, "no step records")
    (tmp_path / "afile").write_text("keep")
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", story, "--out", tmp_path / "afile" / "x")
    one_line_error(code, err, "cannot write in")
    assert not (tmp_path / "ev" / "evaluation.json").exists()


# -- impossible sizes and odd paths --------------------------------------------------------------------------------


def test_a_model_too_big_for_memory_is_one_line(tmp_path, capsys, story, monkeypatch):
    def no_memory(config):  # what `--emb-dim 1000000` gets from the allocator
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr("gpt2tui.training.pretrain.GPT2", no_memory)  # what pretrain builds the model with
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "run", "--max-steps", "1"))
    one_line_error(code, err, "does not fit in memory", "--emb-dim")


def test_a_lora_rank_above_the_layers_rank_is_refused():
    from gpt2tui import GPT2, GPT2Config
    from gpt2tui.errors import ConfigError
    from gpt2tui.training.lora import LoRAConfig, apply_lora

    model = GPT2(GPT2Config(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    with pytest.raises(ConfigError, match="LoRA rank 17 is above the full rank 16"):
        apply_lora(model, LoRAConfig(rank=17))
    assert all(p.requires_grad for p in model.parameters())  # refused before freezing anything


def test_data_paths_that_are_not_files_say_what_they_are(tmp_path):
    from gpt2tui.errors import DataError
    from gpt2tui.training.data import expand_paths, load_examples

    with pytest.raises(DataError, match="not a regular file or folder"):
        expand_paths(["/dev/null"])
    with pytest.raises(DataError, match="is a folder; pass one instruction file"):
        load_examples(tmp_path, tokenizer=None)


def test_a_write_killed_mid_way_leaves_nothing_after_the_next_one(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ckpt.tmp-{int(dead.stdout)}"  # what a second Ctrl+C during a save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    with atomic_directory(tmp_path / "ckpt", MODEL_DIR_FILES) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_saved_model_directory_is_as_readable_as_any_new_file(tmp_path):
    # safetensors creates its files 0600; under umask 022 a model directory's files should be 0644 like any other.
    old = os.umask(0o022)
    try:
        out = save_checkpoint(GPT2(GPT2Config(context_length=8, emb_dim=8, n_heads=2, n_layers=1)), tmp_path / "m")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes
