"""Broken training inputs, generated: instruction data for `finetune`, damaged runs for `pretrain --resume`."""

from __future__ import annotations

import json
import shutil

import pytest

from gpt2tui_testkit.badinput import assert_one_line_error, run_cli, snapshot
from gpt2tui_testkit.training import SIZE_FLAGS, write_story

GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}

RECORDS = {
    "not a record": [1, 2, 3],
    "strings": ["Name a colour."],
    "no output": [{"instruction": "Name a colour."}],
    "no instruction": [{"output": "Blue."}],
    "an output that is a number": [{**GOOD, "output": 5}],
    "an instruction that is a list": [{**GOOD, "instruction": ["a"]}],
    "an input that is an object": [{**GOOD, "input": {"a": 1}}],
    "messages that are not a list": [{"messages": "hello"}],
    "messages with an unknown role": [{"messages": [{"role": "wizard", "content": "hi"}]}],
    "messages without content": [{"messages": [{"role": "user"}]}],
    "two user turns in a row": [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
    "a conversation ending with the user": [{"messages": [{"role": "user", "content": "a"}]}],
    "no records": [],
}

RAW = {
    "empty": b"",
    "not json": b"instruction: name a colour",
    "nested deep": b"[" * 100_000 + b"]" * 100_000,
    "a number of 5000 digits": b'[{"instruction": "a", "output": ' + b"9" * 5000 + b"}]",
    "binary": bytes(range(256)) * 4,
    "utf-16": json.dumps([GOOD]).encode("utf-16"),
    "cut short": json.dumps([GOOD] * 3).encode()[:-10],
    "a json object": json.dumps(GOOD).encode()[:-1] + b', "extra": [}',
}


def _jsonl(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


CASES = {f"{name} (.json)": (".json", json.dumps(r).encode()) for name, r in RECORDS.items()}
CASES |= {f"{name} (.jsonl)": (".jsonl", _jsonl(r)) for name, r in RECORDS.items() if r}
CASES |= {f"{name} (.json)": (".json", raw) for name, raw in RAW.items()}
CASES |= {f"{name} (.jsonl)": (".jsonl", raw) for name, raw in RAW.items() if name != "empty"}


@pytest.mark.parametrize("name", CASES)
def test_broken_instruction_data(capsys, tmp_path, tiny_text_model, name):
    suffix, content = CASES[name]
    data = tmp_path / f"data{suffix}"
    data.write_bytes(content)
    before = snapshot(tmp_path, tiny_text_model)
    code, _, err = run_cli(capsys, "finetune", "--data", data, "--base", tiny_text_model, "--out", tmp_path / "out",
                           "--run-dir", tmp_path / "run", "--epochs", "1")
    assert_one_line_error(code, err)
    assert snapshot(tmp_path, tiny_text_model) == before


@pytest.mark.parametrize("name", ["nested deep (.json)", "not json (.json)", "no output (.jsonl)"])
def test_broken_evaluation_data(capsys, tmp_path, tiny_text_model, name):
    suffix, content = CASES[name]
    data = tmp_path / f"data{suffix}"
    data.write_bytes(content)
    before = snapshot(tmp_path, tiny_text_model)
    code, _, err = run_cli(capsys, "evaluate", "--model", tiny_text_model, "--data", data, "--out", tmp_path / "ev")
    assert_one_line_error(code, err)
    assert snapshot(tmp_path, tiny_text_model) == before


# -- damaged runs, resumed ---------------------------------------------------------------------------------------------


def _pretrain_argv(story, out, *extra):
    return ["pretrain", "--data", story, "--out", out, *SIZE_FLAGS, "--context-length", "16", "--batch-size", "2",
            "--sample-tokens", "0", "--eval-every", "0", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A two-step pretraining run, copied by each case."""
    from gpt2tui.cli import main

    folder = tmp_path_factory.mktemp("run")
    story = write_story(folder / "story.txt")
    assert main([str(a) for a in _pretrain_argv(story, folder / "run", "--max-steps", "2")]) == 0
    return folder


def _state(run, change):
    path = run / "checkpoint" / "trainer_state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def _truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


DAMAGE = {
    "optimizer.pt truncated": lambda r: _truncate(r / "checkpoint" / "optimizer.pt", 100),
    "optimizer.pt garbage": lambda r: (r / "checkpoint" / "optimizer.pt").write_bytes(b"\x00garbage" * 64),
    "optimizer.pt missing": lambda r: (r / "checkpoint" / "optimizer.pt").unlink(),
    "trainer_state.json not json": lambda r: (r / "checkpoint" / "trainer_state.json").write_text("{step"),
    "trainer_state.json a list": lambda r: (r / "checkpoint" / "trainer_state.json").write_text("[]"),
    "trainer_state.json nested deep": lambda r: (r / "checkpoint" / "trainer_state.json").write_text(
        "[" * 100_000 + "]" * 100_000),
    "step negative": lambda r: _state(r, lambda s: s.update(step=-3)),
    "step a string": lambda r: _state(r, lambda s: s.update(step="2")),
    "rng not base64": lambda r: _state(r, lambda s: s.update(rng=[{"torch": "not base64!", "python": 5}])),
    "rng empty": lambda r: _state(r, lambda s: s.update(rng=[{}])),
    "rng a number": lambda r: _state(r, lambda s: s.update(rng=7)),
    "run entry missing": lambda r: _state(r, lambda s: s.pop("run")),
    "model.safetensors truncated": lambda r: _truncate(r / "checkpoint" / "model.safetensors", 200),
    "token shard truncated": lambda r: _truncate(next((r / "tokens").glob("tokens-*")), 7),
    "token manifest damaged": lambda r: (r / "tokens" / "manifest.json").write_text("{"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_resuming_a_damaged_run(capsys, tmp_path, finished_run, name):
    shutil.copytree(finished_run, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    DAMAGE[name](run)
    before = snapshot(run)
    code, _, err = run_cli(capsys, *_pretrain_argv(tmp_path / "copy" / "story.txt", run, "--max-steps", "4",
                                                   "--resume"))
    assert "Traceback" not in err and code == 1, err
    assert err.strip().splitlines()[-1].startswith("error: "), err  # after the run's own lines (loading, data)
    assert snapshot(run) == before  # the damaged run is left for the user to look at
