"""The bad-input suite's shared parts (tests/badinput): running the CLI in-process, the one-line check, snapshots of
the user's files, and the tables of broken model folders that both the in-process and the subprocess cases use."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gpt2tui.cli import main


def copy_of(source: Path, tmp_path: Path, name: str = "model") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under `folders`, by path, with a hash of its bytes."""
    files = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's answer to a bad flag
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, exit_code: int = 1, words: tuple[str, ...] = ()) -> None:
    """The documented answer to bad input: exactly one non-empty line on stderr, `error: ...` (or argparse's
    `gpt2tui ...: error: ...` with exit 2), no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert code == exit_code, (code, err)
    assert lines[0].startswith("error: ") or (exit_code == 2 and ": error: " in lines[0]), err
    for w in words:
        assert w in lines[0], (w, lines[0])


def set_field(folder, key, value):
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))  # NaN is written as JSON's NaN, which Python reads


BROKEN_JSON = {
    "empty": b"",
    "not json": b"this is not json",
    "a list": b"[1, 2]",
    "a string": b'"gpt2"',
    "null": b"null",
    "nested deep": b"[" * 100_000 + b"]" * 100_000,
    "a number of 5000 digits": b'{"n_layers": ' + b"9" * 5000 + b"}",
    "not utf-8": b"\xff\xfe{\x00",
    "cut short": b'{"n_layers": 1, "emb',
}


def rewrite(folder, change):
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))


def first_matrix(state):
    return next(k for k in sorted(state) if state[k].dim() == 2 and "wte" not in k)


WEIGHTS = {
    "truncated to 0 bytes": lambda f: (f / "model.safetensors").write_bytes(b""),
    "truncated to 8 bytes": lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:8]),
    "truncated to 64 bytes": lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:64]),
    "truncated to half": lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[: (f / "model.safetensors").stat().st_size // 2]),
    "a garbage header": lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 8 + b"{garbage" * 64),
    "an int8 tensor": lambda f: rewrite(f, lambda s: s.update({first_matrix(s): s[first_matrix(s)].to(torch.int8)})),
    "a float8 tensor": lambda f: rewrite(
        f, lambda s: s.update({first_matrix(s): s[first_matrix(s)].to(torch.float8_e4m3fn)})),
    "a missing tensor": lambda f: rewrite(f, lambda s: s.pop(first_matrix(s))),
    "an extra tensor": lambda f: rewrite(f, lambda s: s.update({"transformer.h.9.extra": torch.zeros(2)})),
    "a wrong shape": lambda f: rewrite(f, lambda s: s.update({first_matrix(s): torch.zeros(3, 5)})),
    "no weight file": lambda f: (f / "model.safetensors").unlink(),
    "a folder for the weights": lambda f: ((f / "model.safetensors").unlink(), (f / "model.safetensors").mkdir()),
    "a garbage pytorch_model.bin": lambda f: ((f / "model.safetensors").unlink(),
                                             (f / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not a zip")),
}


def sharded(folder, weight_map):
    (folder / "model.safetensors").rename(folder / "shard-1.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        weight_map if isinstance(weight_map, str) else json.dumps({"weight_map": weight_map}))


INDEXES = {
    "weight_map a list": ["shard-1.safetensors"],
    "weight_map of numbers": {"transformer.wte.weight": 3},
    "weight_map empty": {},
    "a file outside the folder": {"transformer.wte.weight": "../outside.safetensors"},
    "an absolute path": {"transformer.wte.weight": "/etc/passwd"},
    "a missing shard": {"transformer.wte.weight": "shard-2.safetensors"},
    "not json": "{weight_map",
}
