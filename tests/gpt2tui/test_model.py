"""The model against Hugging Face `transformers` on the same random weights, loaded through our real loader."""

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, load_weights
from gpt2tui_testkit.hf import write_hf_dir

SMALL_CONFIGS = [
    dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
    dict(n_embd=48, n_layer=3, n_head=3, n_positions=40, vocab_size=1000),  # head_dim 16, odd vocabulary
    dict(n_embd=96, n_layer=1, n_head=2, n_positions=64),  # head_dim 48
]


def _hf_logits(path, ids):
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(ids).logits


@pytest.mark.parametrize("cfg", SMALL_CONFIGS, ids=["64x2", "48x3-v1000", "96x1"])
def test_logits_match_transformers(tmp_path, cfg):
    path = write_hf_dir(tmp_path / "m", **cfg)
    model = load_weights(path)
    ids = torch.randint(0, cfg.get("vocab_size", 50257), (2, min(37, cfg["n_positions"])))
    with torch.no_grad():
        ours = model(ids)
    assert (ours - _hf_logits(path, ids)).abs().max().item() < 1e-4


@pytest.mark.slow
def test_logits_match_transformers_at_124m_shape(tmp_path):
    path = write_hf_dir(tmp_path / "m124", n_embd=768, n_layer=12, n_head=12, n_positions=1024, initializer_range=0.02)
    model = load_weights(path)
    assert model.num_params() == 124_439_808
    ids = torch.randint(0, 50257, (1, 33))
    with torch.no_grad():
        ours = model(ids)
    assert (ours - _hf_logits(path, ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_attention_backends_give_the_same_logits(hf_small_dir, backend, monkeypatch):
    ids = torch.randint(0, 50257, (2, 29))
    model = load_weights(hf_small_dir)
    with torch.no_grad():
        base = model(ids)
    monkeypatch.setenv("GPT2TUI_ATTENTION", backend)
    with torch.no_grad():
        assert torch.allclose(model(ids), base, atol=1e-5)


def test_output_head_is_tied_to_token_embedding():
    model = GPT2(GPT2Config(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    h = torch.randn(1, 3, 16)
    assert torch.equal(model.head(h), h @ model.transformer.wte.weight.T)
    assert "lm_head.weight" not in model.state_dict()


def test_dropout_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.5))
    ids = torch.randint(0, 50, (2, 10))
    model.train()
    assert not torch.allclose(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


def test_loss_ignores_minus_100_and_backpropagates():
    model = GPT2(GPT2Config(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0))
    ids = torch.randint(0, 50, (2, 10))
    targets = ids.roll(-1, dims=1)
    targets[:, -3:] = -100
    logits, loss = model(ids, targets=targets)
    expected = torch.nn.functional.cross_entropy(logits[:, :-3].flatten(0, 1), targets[:, :-3].flatten())
    assert torch.allclose(loss, expected)
    loss.backward()
    assert model.transformer.wte.weight.grad is not None


def test_too_long_sequence_is_a_clear_error():
    model = GPT2(GPT2Config(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    with pytest.raises(ValueError, match="exceeds the context length 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
