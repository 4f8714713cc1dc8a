"""The chat app driven headless through Textual's Pilot, on a tiny random-weight model that no test downloads."""

from __future__ import annotations

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, Tokenizer
from gpt2tui.session import ChatSession
from gpt2tui.tui import ChatApp
from gpt2tui_testkit.tui import MODEL_NAME


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    # A 512-token window leaves room for a reply long enough to be stopped half-way.
    model = GPT2(GPT2Config(context_length=512, emb_dim=64, n_heads=4, n_layers=2)).eval()
    with torch.no_grad():  # a wide init spreads the logits: varied tokens, no near-ties under greedy decoding
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer()


@pytest.fixture
def make_app(tiny_model, tokenizer):
    """`make_app(**settings)`: the app on the tiny model; keyword arguments are new conversations' settings."""

    def make(loader=None, **settings) -> ChatApp:
        loader = loader or (lambda: ChatSession(tiny_model, tokenizer, model_name=MODEL_NAME))
        return ChatApp(MODEL_NAME, loader=loader, settings=settings)

    return make
