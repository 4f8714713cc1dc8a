"""Broken model folders, generated: configs, JSON, weight files, sharded indexes, LoRA adapters. `gpt2tui info`
reads each (the header checks of a load), `gpt2tui generate` the ones whose damage only the values show."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from gpt2tui_testkit.badinput import (
    BROKEN_JSON,
    INDEXES,
    WEIGHTS,
    assert_one_line_error,
    copy_of,
    first_matrix,
    rewrite,
    run_cli,
    set_field,
    sharded,
    snapshot,
)

# -- configs -------------------------------------------------------------------------------------------------------

BAD_SIZES = [0, -1, 1.5, "12", None, True, [], {}, 10**7, 10**12, 2**63, math.nan]
OUR_SIZE_FIELDS = ["vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"]
HF_SIZE_FIELDS = ["vocab_size", "n_positions", "n_embd", "n_head", "n_layer"]

OUR_OTHER = [
    ("drop_rate", v) for v in (-0.1, 1.0, "0.1", None, math.nan, True)
] + [("qkv_bias", v) for v in ("false", 0, None)] + [("attn_backend", v) for v in ("fast", 3, None)] + [
    ("format", v) for v in ("other", 1, None)
] + [("format_version", v) for v in (3, 99, 0, -1, "1", 1.5, True, None)] + [
    ("quantization", v) for v in ("int4", 8, ["int8"])
] + [
    ("chat_template", v) for v in (5, ["alpaca"], {"a": 1})
] + [("unknown_field", 1)]

HF_OTHER = [("model_type", v) for v in ("llama", None, 3)] + [
    ("activation_function", v) for v in ("relu", None)
] + [("n_inner", 10)] + [("layer_norm_epsilon", v) for v in ("abc", None, 1e-6, math.nan, True, [1e-5])] + [
    ("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True),
    ("tie_word_embeddings", False),
] + [("resid_pdrop", v) for v in (2.0, "x")]


def _check(capsys, folder, *words, command=("info",)):
    before = snapshot(folder)
    code, _, err = run_cli(capsys, *command, "--model", folder)
    assert_one_line_error(code, err, words=words)
    assert snapshot(folder) == before  # nothing of the user's was changed


SIZE_CASES = [("ours", f, v) for f in OUR_SIZE_FIELDS for v in BAD_SIZES] + [
    ("hf", f, v) for f in HF_SIZE_FIELDS for v in BAD_SIZES]


@pytest.mark.parametrize("kind, field, value", SIZE_CASES, ids=[f"{k}-{f}-{v!r}" for k, f, v in SIZE_CASES])
def test_config_sizes(capsys, tmp_path, tiny_ours, tiny_hf, kind, field, value):
    folder = copy_of(tiny_ours if kind == "ours" else tiny_hf, tmp_path)
    set_field(folder, field, value)
    _check(capsys, folder)


@pytest.mark.parametrize("field, value", OUR_OTHER, ids=repr)
def test_our_config_fields(capsys, tmp_path, tiny_ours, field, value):
    folder = copy_of(tiny_ours, tmp_path)
    set_field(folder, field, value)
    _check(capsys, folder)


@pytest.mark.parametrize("field, value", HF_OTHER, ids=repr)
def test_hf_config_fields(capsys, tmp_path, tiny_hf, field, value):
    folder = copy_of(tiny_hf, tmp_path)
    set_field(folder, field, value)
    _check(capsys, folder)


@pytest.mark.parametrize("name", BROKEN_JSON)
@pytest.mark.parametrize("kind", ["ours", "hf"])
def test_broken_config_json(capsys, tmp_path, tiny_ours, tiny_hf, kind, name):
    folder = copy_of(tiny_ours if kind == "ours" else tiny_hf, tmp_path)
    (folder / "config.json").write_bytes(BROKEN_JSON[name])
    _check(capsys, folder, "config.json")


# -- weight files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WEIGHTS)
def test_broken_weight_files(capsys, tmp_path, tiny_ours, name):
    folder = copy_of(tiny_ours, tmp_path)
    WEIGHTS[name](folder)
    _check(capsys, folder)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_weights_that_are_not_finite_are_refused_by_name(capsys, tmp_path, tiny_text_model, value):
    folder = copy_of(tiny_text_model, tmp_path)
    name = []

    def poison(state):
        name.append(first_matrix(state))
        state[name[0]][0, 0] = value

    rewrite(folder, poison)
    _check(capsys, folder, name[0], "NaN or infinite", command=("generate", "Hello", "-n", "2"))
    code, out, err = run_cli(capsys, "info", "--model", folder)  # plain info reads headers alone: it passes
    assert code == 0 and err == ""
    _check(capsys, folder, name[0], command=("info", "--check"))


@pytest.mark.parametrize("name", INDEXES)
def test_broken_sharded_indexes(capsys, tmp_path, tiny_ours, name):
    folder = copy_of(tiny_ours, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes(b"never opened")
    sharded(folder, INDEXES[name])
    _check(capsys, folder)


# -- LoRA adapters ---------------------------------------------------------------------------------------------------


def _adapter(folder, base_dir, **meta):
    folder.mkdir()
    config = {"format": "gpt2tui-lora", "base": str(base_dir), "rank": 2, "alpha": 4, "dropout": 0.0,
              "targets": ["c_attn"], **meta}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({"transformer.h.0.attn.c_attn.lora_A": torch.zeros(2, 8),
               "transformer.h.0.attn.c_attn.lora_B": torch.zeros(24, 2)}, str(folder / "adapter.safetensors"))
    return folder


ADAPTERS = {
    "its own base": lambda t, base: _adapter(t / "a", t / "a"),
    "a cycle of two": lambda t, base: (_adapter(t / "b", t / "a"), _adapter(t / "a", t / "b"))[1],
    "a base that is not there": lambda t, base: _adapter(t / "a", t / "nowhere"),
    "a base that is a file": lambda t, base: ((t / "file").write_text("x"), _adapter(t / "a", t / "file"))[1],
    "a rank that is text": lambda t, base: _adapter(t / "a", base, rank="x"),
    "a rank of 0": lambda t, base: _adapter(t / "a", base, rank=0),
    "no alpha": lambda t, base: _adapter(t / "a", base, alpha=None),
    "another format": lambda t, base: _adapter(t / "a", base, format="peft"),
    "a base that is not a name": lambda t, base: _adapter(t / "a", base, base=["x"]),
    "bad json": lambda t, base: ((a := _adapter(t / "a", base)) / "adapter_config.json").write_text("{x") and a,
    "no adapter weights": lambda t, base: ((a := _adapter(t / "a", base)) / "adapter.safetensors").unlink() or a,
    "truncated adapter weights": lambda t, base: ((a := _adapter(t / "a", base)) / "adapter.safetensors").write_bytes(
        b"\x10\x00") and a,
    "adapter tensors for another model": lambda t, base: (
        save_file({"transformer.h.7.mlp.c_fc.lora_A": torch.zeros(2, 3)},
                  str((a := _adapter(t / "a", base)) / "adapter.safetensors")), a)[1],
}


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("command", [("info",), ("generate", "Hello", "-n", "2")], ids=["info", "generate"])
def test_broken_adapters(capsys, tmp_path, tiny_ours, name, command):
    base = copy_of(tiny_ours, tmp_path, "base")
    adapter = ADAPTERS[name](tmp_path, base)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, *command, "--model", adapter)
    assert_one_line_error(code, err)
    assert snapshot(tmp_path) == before
