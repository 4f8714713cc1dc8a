"""A random-weight GPT-2 written by `transformers` (`save_pretrained`), with a Hugging Face tokenizer built from the
package's own GPT-2 ranks (no hub here), loaded both ways: ours and transformers'."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import transformers
from transformers.convert_slow_tokenizer import TikTokenConverter

from gpt2tui.tokenizer import _tiktoken_encoding
from gpt2tui.weights import load_model
from gpt2tui_testkit.hf import write_hf_dir

# A short window, so that the tests' small files reach truncation and several rolling windows.
N_POSITIONS = 48


def write_tokenizer(path) -> None:
    """GPT-2's tokenizer in Hugging Face's format (`tokenizer.json`), converted from our `gpt2.tiktoken`."""
    enc = _tiktoken_encoding()
    ranks = str(resources.files("gpt2tui").joinpath("assets/gpt2.tiktoken"))
    converted = TikTokenConverter(
        vocab_file=ranks, pattern=enc._pat_str, extra_special_tokens=enc._special_tokens
    ).converted()
    eot = "<|endoftext|>"
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=converted, eos_token=eot, bos_token=eot, unk_token=eot
    )
    fast.save_pretrained(path)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    path = write_hf_dir(tmp_path_factory.mktemp("evals") / "gpt2-random", seed=11, n_positions=N_POSITIONS)
    write_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def ours(model_dir):
    model, tokenizer = load_model(model_dir, device="cpu", dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def hf(model_dir):
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny models gain nothing from two on a shared two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hf_score(hf):
    """`(logprob, greedy)` of a continuation after a context, by transformers alone: the input is the last
    `n_positions` tokens of context + continuation[:-1] (lm-eval's truncation), one sequence at a time, no padding."""
    model = hf[0]
    window = model.config.n_positions

    @torch.no_grad()
    def score(context: list[int], continuation: list[int]) -> tuple[float, bool]:
        seq = (list(context) + list(continuation))[-(window + 1) :]
        logprobs = torch.log_softmax(model(torch.tensor([seq[:-1]])).logits[0].double(), dim=-1)  # (T, V)
        n = len(continuation)
        target = torch.tensor(seq[-n:])
        rows = logprobs[-n:]
        return rows.gather(1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())

    return score
