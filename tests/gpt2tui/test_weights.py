"""Loading, saving and resolving models; every bad input gets one clear error and no half-loaded model."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2tui import GPT2, GPT2Config, load_model, load_weights, save_checkpoint
from gpt2tui.errors import CheckpointError, ConfigError, ModelNotFoundError
from gpt2tui.weights import local_models, models_dir, resolve
from gpt2tui_testkit.hf import hf_gpt2, read_config, write_hf_dir

TINY = GPT2Config(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2)


def _copy_dir(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_own_checkpoint_round_trip_keeps_weights_config_and_template(tmp_path):
    model = GPT2(TINY)
    save_checkpoint(model, tmp_path / "ckpt", chat_template="### Instruction:\n{prompt}")
    meta = read_config(tmp_path / "ckpt")
    assert meta["format"] == "gpt2tui" and meta["emb_dim"] == 32 and meta["chat_template"].startswith("###")
    loaded = load_weights(tmp_path / "ckpt")
    assert loaded.config == TINY and loaded.chat_template == meta["chat_template"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    save_checkpoint(GPT2(TINY), tmp_path / "ckpt")
    second = GPT2(TINY)
    save_checkpoint(second, tmp_path / "ckpt")
    assert torch.equal(load_weights(tmp_path / "ckpt").transformer.wte.weight, second.transformer.wte.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_hf_pytorch_model_bin_loads_like_safetensors(tmp_path):
    safe = load_weights(write_hf_dir(tmp_path / "a", seed=3))
    pickled = load_weights(write_hf_dir(tmp_path / "b", seed=3, safe=False))
    assert (tmp_path / "b" / "pytorch_model.bin").exists() and not (tmp_path / "b" / "model.safetensors").exists()
    for key, value in safe.state_dict().items():
        assert torch.equal(value, pickled.state_dict()[key])


def test_official_layout_with_mask_buffers_and_lm_head_loads(tmp_path):
    """OpenAI's files name tensors without `transformer.`, keep `attn.bias` buffers and may repeat lm_head."""
    src = write_hf_dir(tmp_path / "src")
    state = load_file(src / "model.safetensors")
    official = {k.removeprefix("transformer."): v for k, v in state.items()}
    official["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
    official["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    official["lm_head.weight"] = official["wte.weight"].clone()
    dst = tmp_path / "official"
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(official, dst / "model.safetensors")
    a, b = load_weights(src), load_weights(dst)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_sharded_safetensors_load(tmp_path):
    src = write_hf_dir(tmp_path / "src")
    state = load_file(src / "model.safetensors")
    keys = sorted(state)
    dst = tmp_path / "sharded"
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, dst / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[half:]}, dst / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a, b = load_weights(src), load_weights(dst)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# -- bad input: one clear error each -------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model directory at .*nowhere.*gpt2tui download"):
        load_model(str(tmp_path / "nowhere"))


def test_missing_config_json(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_weights(tmp_path / "m")


def test_missing_weights_file(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        load_weights(d)


def test_truncated_safetensors(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        load_weights(d)


def test_corrupt_safetensors_header(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_weights(d)


def test_wrong_shape_names_tensor_expected_and_found(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(64, 200)
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight has shape \(64, 200\), expected \(64, 256\)"):
        load_weights(d)


def test_missing_keys_are_named(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    del state["transformer.ln_f.bias"]
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): transformer\.ln_f\.bias"):
        load_weights(d)


def test_unexpected_keys_are_named(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    state = load_file(d / "model.safetensors")
    state["transformer.h.9.attn.c_attn.weight"] = torch.zeros(64, 192)
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): transformer\.h\.9\.attn\.c_attn\.weight"):
        load_weights(d)


def test_config_with_more_layers_than_the_weights(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    meta = read_config(d)
    meta["n_layer"] = 3
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing .* transformer.h.2.*config.json does not match"):
        load_weights(d)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("activation_function", "relu", "activation_function='relu' is not supported"),
        ("model_type", "llama", "only GPT-2"),
        ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon"),
        ("n_head", 5, "divisible"),
    ],
)
def test_hf_config_that_does_not_fit_gpt2(tmp_path, hf_small_dir, field, value, words):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    meta = read_config(d)
    meta[field] = value
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=words):
        load_weights(d)


def test_own_checkpoint_config_that_does_not_match_the_weights(tmp_path):
    save_checkpoint(GPT2(TINY), tmp_path / "c")
    meta = read_config(tmp_path / "c")
    meta["emb_dim"] = 64
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"transformer\.wte\.weight has shape \(50257, 32\), expected \(50257, 64\)"):
        load_weights(tmp_path / "c")


def test_config_json_that_is_not_json(tmp_path):
    save_checkpoint(GPT2(TINY), tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{ oops")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_weights(tmp_path / "c")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# torch's weights-only unpickler remarks on the hostile file's pickle protocol before refusing it; the refusal is the test.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused(tmp_path, hf_small_dir):
    d = _copy_dir(hf_small_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be loaded safely as plain tensors"):
        load_weights(d)


def test_offline_with_nothing_cached_says_how_to_get_weights():
    with pytest.raises(ModelNotFoundError, match="gpt2 is not downloaded and the Hub is offline; get weights with"):
        load_model("gpt2")


def test_unknown_name_lists_the_choices():
    with pytest.raises(ModelNotFoundError, match="unknown model 'gpt3'.*gpt2-medium"):
        resolve("gpt3")


def test_small_vocabulary_model_is_refused_for_text(tmp_path):
    write_hf_dir(tmp_path / "m", vocab_size=1000)
    with pytest.raises(ConfigError, match="vocab_size 1000 is smaller than the GPT-2 tokenizer's 50257"):
        load_model(tmp_path / "m")


# -- resolving names -----------------------------------------------------------------------------------------------


def test_name_of_a_model_saved_in_the_models_folder():
    save_checkpoint(GPT2(TINY), models_dir() / "my-bot")
    model, tokenizer = load_model("my-bot")
    assert model.config == TINY and tokenizer.n_vocab == 50257
    assert [m["name"] for m in local_models()] == ["my-bot"]


def test_official_name_found_in_the_hugging_face_cache(isolated_home):
    """The cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/REV/...}."""
    repo = isolated_home / "hf" / "hub" / "models--openai-community--gpt2"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    hf_gpt2(seed=5).save_pretrained(repo / "snapshots" / rev)
    model, _ = load_model("gpt2")
    assert model.config.emb_dim == 64
    assert [(m["name"], m["source"]) for m in local_models()] == [("gpt2", "hugging face cache")]


def test_official_name_not_cached_is_downloaded_when_online(monkeypatch, isolated_home):
    """The download path, with the Hub replaced by a function that writes what the Hub would."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def fake_snapshot_download(repo_id, *, cache_dir, allow_patterns, local_files_only=False, **kw):
        calls.append((repo_id, local_files_only))
        target = cache_dir / "fake" / repo_id
        if local_files_only:
            if not target.exists():
                raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
            return str(target)
        assert "model.safetensors" in allow_patterns and "config.json" in allow_patterns
        hf_gpt2(seed=2).save_pretrained(target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model, _ = load_model("gpt2-medium")
    assert model.config.emb_dim == 64
    assert calls == [("openai-community/gpt2-medium", True), ("openai-community/gpt2-medium", False)]
    load_model("gpt2-medium")  # now cached: no second download
    assert calls[-1] == ("openai-community/gpt2-medium", True)


def test_pending_download_names_what_resolve_would_fetch(monkeypatch, tmp_path):
    from gpt2tui import weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert weights.pending_download("gpt2") == "gpt2"
    assert weights.pending_download("openai-community/gpt2-medium") == "gpt2-medium"
    assert weights.pending_download(str(tmp_path)) is None  # a path is never downloaded
    (weights.models_dir() / "gpt2").mkdir(parents=True)
    assert weights.pending_download("gpt2") is None  # a saved model of that name wins
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.pending_download("gpt2-large") is None


def _adapter_dir(tmp_path, base_dir, tensors, **meta):
    d = tmp_path / "adapter"
    d.mkdir()
    config = {"format": "gpt2tui-lora", "base": str(base_dir), "rank": 2, "alpha": 4.0, "dropout": 0.0,
              "targets": ["c_attn"], "chat_template": "alpaca", **meta}
    (d / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(d / "adapter.safetensors"))
    return d


def test_lora_adapter_folds_into_its_base(tmp_path):
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=1))
    base = save_checkpoint(model, tmp_path / "base")
    A, B = torch.randn(2, 32), torch.randn(96, 2)  # (r, in), (out, r) for c_attn: 32 → 96
    adapter = _adapter_dir(tmp_path, base, {"transformer.h.0.attn.c_attn.lora_A": A,
                                            "transformer.h.0.attn.c_attn.lora_B": B})
    folded = load_weights(adapter)
    want = model.transformer.h[0].attn.c_attn.weight + (B @ A) * 2.0  # alpha / rank
    assert torch.allclose(folded.transformer.h[0].attn.c_attn.weight, want, atol=1e-6)
    assert folded.chat_template == "alpaca"


@pytest.mark.parametrize(
    "tensors, meta, error, words",
    [
        ({}, {"format": "other"}, CheckpointError, "not a gpt2tui LoRA adapter"),
        ({}, {"base": "/nowhere/at/all"}, ModelNotFoundError, "/nowhere/at/all"),
        ({"transformer.h.0.attn.c_attn.lora_A": torch.zeros(2, 31),
          "transformer.h.0.attn.c_attn.lora_B": torch.zeros(96, 2)}, {}, CheckpointError, "c_attn has shapes"),
        ({"transformer.h.0.attn.nothing.lora_A": torch.zeros(2, 32),
          "transformer.h.0.attn.nothing.lora_B": torch.zeros(96, 2)}, {}, CheckpointError, "does not fit"),
        ({}, {"rank": 0}, CheckpointError, "rank and alpha"),
    ],
)
def test_bad_lora_adapters_are_one_line_errors(tmp_path, tensors, meta, error, words):
    model = GPT2(GPT2Config(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=1))
    base = save_checkpoint(model, tmp_path / "base")
    adapter = _adapter_dir(tmp_path, base, tensors or {"x.lora_A": torch.zeros(1)}, **meta)
    with pytest.raises(error, match=words) as e:
        load_weights(adapter)
    assert "\n" not in str(e.value)
