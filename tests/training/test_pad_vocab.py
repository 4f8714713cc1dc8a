"""`--pad-vocab`: training on a vocabulary padded to a multiple of 64, saving the model's own (GPT2.pad_vocab_)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from gpt2tui import GPT2, GPT2Config
from gpt2tui.training import data as data_module
from gpt2tui.weights import load_weights, save_checkpoint
from gpt2tui_testkit.training import metrics, pretrain_argv, run_cli, write_story


def _model(vocab=97):
    torch.manual_seed(0)
    return GPT2(GPT2Config(vocab_size=vocab, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0))


def test_padding_grows_the_embedding_and_the_head_still_gives_the_model_s_logits():
    model, padded = _model(), _model()
    padded.pad_vocab_()
    assert padded.transformer.wte.weight.shape == (128, 32) and padded.config.vocab_size == 97
    assert not padded.transformer.wte.weight[97:].any()  # new rows start at zero
    idx = torch.randint(0, 97, (2, 9))
    assert torch.equal(padded(idx), model(idx))  # (2, 9, 97): the padded rows are no logits
    # The fused loss runs over the padded head; the zero rows add 31 exp(0) terms to a 97-term normaliser here.
    _, loss = padded(idx, targets=idx, return_logits=False)
    assert torch.isfinite(loss)
    assert GPT2(GPT2Config()).pad_vocab_().transformer.wte.weight.shape[0] == 50304  # GPT-2's 50,257


def test_a_saved_padded_model_keeps_its_own_vocabulary(tmp_path):
    model = _model().pad_vocab_()
    save_checkpoint(model, tmp_path / "m")
    assert load_file(str(tmp_path / "m" / "model.safetensors"))["transformer.wte.weight"].shape == (97, 32)
    loaded = load_weights(tmp_path / "m", device="cpu")
    idx = torch.randint(0, 97, (1, 5))
    assert torch.equal(loaded(idx), model(idx))


def test_a_padded_run_resumes_exactly_and_saves_the_model_s_vocabulary(tmp_path, capsys, monkeypatch):
    story = write_story(tmp_path / "story.txt")
    common = ["--max-steps", "6", "--eval-every", "3", "--save-every", "2", "--pad-vocab"]
    code, _, err = run_cli(capsys, *pretrain_argv(story, tmp_path / "full", *common))
    assert code == 0, err
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    saved = load_file(str(tmp_path / "full" / "model.safetensors"))["transformer.wte.weight"]
    assert saved.shape[0] == config["vocab_size"] == 50257

    real = data_module.PretrainData.train_batch

    def interrupt_at_step_4(self, k, rank=0, world=1):
        if k == 4:
            raise KeyboardInterrupt
        return real(self, k, rank, world)

    monkeypatch.setattr(data_module.PretrainData, "train_batch", interrupt_at_step_4)
    part = tmp_path / "part"
    assert run_cli(capsys, *pretrain_argv(story, part, *common))[0] == 130
    monkeypatch.setattr(data_module.PretrainData, "train_batch", real)
    # Resumed without the flag: one line, nothing overwritten.
    code, _, err = run_cli(capsys, *pretrain_argv(story, part, *common[:-1], "--resume"))
    assert code == 1 and "Traceback" not in err
    assert "was trained with --pad-vocab; resume it the same way" in err.strip().splitlines()[-1]
    code, _, err = run_cli(capsys, *pretrain_argv(story, part, *common, "--resume"))
    assert code == 0, err
    for a, b in zip(metrics(tmp_path / "full"), metrics(part), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6), a["step"]
