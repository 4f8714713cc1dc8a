"""`gpt2tui dpo` through the paths it shares with finetune: `--lora --merge` writes a plain model, and two processes
under torchrun take the steps one process takes."""

import os
import subprocess
import sys

import pytest
import torch

from gpt2tui import GPT2, load_model
from gpt2tui.training.lora import LoRALinear
from gpt2tui.training.synthetic import preference_records
from gpt2tui_testkit import free_port
from gpt2tui_testkit.training import dpo_argv, metrics, run_cli, tiny_model_dir, write_jsonl


def _argv(data, base, out, *extra) -> list:
    return dpo_argv(data, base, out, "--eval-every", "0", "--max-new-tokens", "1", "--seed", "7", *extra)


def test_lora_dpo_with_merge_writes_a_plain_model_that_differs_from_its_base(tmp_path, capsys):
    base = tiny_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(16, seed=1))
    argv = _argv(data, base, tmp_path / "merged", "--lora", "--lora-rank", "2", "--merge")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    merged, _ = load_model(tmp_path / "merged", device="cpu")
    original, _ = load_model(base, device="cpu")
    assert isinstance(merged, GPT2) and not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    x = torch.randint(0, 50257, (2, 10))
    with torch.no_grad():
        assert not torch.allclose(merged(x), original(x))  # the adapters' steps are in the weights


@pytest.mark.slow  # two torchrun processes start torch and the tiny model each
def test_torchrun_two_processes_take_the_steps_of_one(tmp_path, capsys):
    """One process accumulating two micro-batches of 2 and two processes with one each see the same pairs per step
    (micro-batch k of a step goes to rank k): the same losses and rewards."""
    base = tiny_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(24, seed=2))
    steps = ["--dropout", "0"]
    micro = ["--batch-size", "2"]
    code, _, err = run_cli(
        capsys, *_argv(data, base, tmp_path / "single", *steps, *micro, "--grad-accum", "2")
    )
    assert code == 0, err
    argv = [str(a) for a in _argv(data, base, tmp_path / "ddp", *steps, *micro)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "gpt2tui.cli",
            *argv,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "xdg" / "gpt2tui" / "runs"
    single, ddp = metrics(runs / "single"), metrics(runs / "ddp")
    assert [r["step"] for r in ddp] == [r["step"] for r in single]
    for a, b in zip(single, ddp, strict=True):
        for key in ("train_loss", "train_margin", "train_pref_acc", "train_chosen_logp"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    assert (tmp_path / "ddp" / "dpo.json").is_file()
