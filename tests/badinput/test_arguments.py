"""Bad command lines, generated: each flag of each command with values it does not take. argparse answers in one
line (`gpt2tui CMD: error: ...`, exit 2) before anything loads; a value only the command can judge, in one line
with exit 1."""

from __future__ import annotations

import pytest
import torch

from gpt2tui_testkit.badinput import assert_one_line_error, run_cli

# (command and the arguments it needs, the flag, bad values)
FLAGS = [
    (["generate", "Hi"], "--max-new-tokens", ["-1", "x", "1.5", ""]),
    (["generate", "Hi"], "--temperature", ["-0.1", "nan", "inf", "x", "101"]),
    (["generate", "Hi"], "--top-k", ["-1", "x", "1.5"]),
    (["generate", "Hi"], "--top-p", ["0", "1.5", "-1", "x", "nan"]),
    (["generate", "Hi"], "--repetition-penalty", ["0", "-1", "x", "inf"]),
    (["generate", "Hi"], "--seed", ["x", "1.5", "-1", str(2**64)]),
    (["generate", "Hi"], "--dtype", ["int8", "float8", ""]),
    (["generate", "Hi"], "--stop", [""]),
    (["chat", "--plain"], "--max-new-tokens", ["0", "-1", "x"]),
    (["chat", "--plain"], "--temperature", ["-1", "x"]),
    (["chat", "--plain"], "--top-p", ["0", "2"]),
    (["download"], "", ["gpt5", "", "../../etc"]),
    (["pretrain", "--data", "x.txt", "--out", "o"], "--max-steps", ["0", "-1", "x"]),
    (["pretrain", "--data", "x.txt", "--out", "o"], "--batch-size", ["0", "x"]),
    (["pretrain", "--data", "x.txt", "--out", "o"], "--lr", ["0", "-1", "x", "nan"]),
    (["pretrain", "--data", "x.txt", "--out", "o"], "--preset", ["gpt9", ""]),
    (["pretrain", "--data", "x.txt", "--out", "o"], "--val-fraction", ["1", "-0.1", "x"]),
    (["finetune", "--data", "x.json", "--base", "b", "--out", "o"], "--epochs", ["0", "-1", "x", "nan"]),
    (["evaluate", "--model", "m", "--data", "x.txt"], "--batch-size", ["0", "x"]),
]
CASES = [(cmd, flag, value) for cmd, flag, values in FLAGS for value in values]


@pytest.mark.parametrize("cmd, flag, value", CASES, ids=[f"{c[0]} {f} {v!r}" for c, f, v in CASES])
def test_a_bad_flag_value_is_one_line_and_exit_2(capsys, cmd, flag, value):
    argv = [*cmd, *([flag, value] if flag else [value])]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, exit_code=2)
    assert "--help" in err


MISSING = [["pretrain"], ["pretrain", "--data", "x.txt"], ["finetune", "--data", "x.json"], ["evaluate"],
           ["generate"], ["download"], ["info", "--nonsense"], ["frobnicate"], ["generate", "Hi", "--top_k", "3"]]


@pytest.mark.parametrize("argv", MISSING, ids=" ".join)
def test_missing_or_unknown_arguments_are_one_line_and_exit_2(capsys, argv):
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, exit_code=2)


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_a_device_that_is_not_here_is_one_line(capsys, tiny_text_model, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, "generate", "Hi", "--model", tiny_text_model, "--device", device, "-n", "1")
    assert_one_line_error(code, err)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:3x", "meta", "cpu:1", "mps:2"])
def test_a_device_no_machine_has_is_a_usage_error(capsys, tiny_text_model, device):
    code, _, err = run_cli(capsys, "generate", "Hi", "--model", tiny_text_model, "--device", device, "-n", "1")
    assert_one_line_error(code, err, exit_code=2)
