"""`gpt2tui finetune` (full and LoRA) and `gpt2tui evaluate` on tiny models and records the tests write."""

import json

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, Tokenizer, generate, load_model
from gpt2tui.chat import TEMPLATES, encode_conversation
from gpt2tui.training.data import load_examples, split_examples
from gpt2tui.training.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora
from gpt2tui.weights import models_dir
from gpt2tui_testkit.training import TINY, instruction_records, run_cli, tiny_model_dir, write_jsonl


def answer(model, tok, messages):
    template = TEMPLATES["alpaca"]
    prompt = encode_conversation(tok, messages, template)[0]
    return generate(model, tok, [prompt], max_new_tokens=6, temperature=0.0, stop=template.stop)[0].strip()


@pytest.mark.slow  # ~30 s on two busy cores: 80 full-batch steps of a random model learning 24 lookups
def test_finetuning_makes_the_model_answer_its_examples(tmp_path, capsys):
    base = tiny_model_dir(tmp_path / "base", emb_dim=64, n_heads=4)
    data = write_jsonl(tmp_path / "clans.jsonl", instruction_records())
    code, _, err = run_cli(capsys, "finetune", "--data", data, "--base", base, "--out", "clan-bot", "--epochs", "80",
                           "--lr", "3e-3", "--warmup-steps", "0", "--mask-prompt", "--batch-size", "20",
                           "--dropout", "0", "--max-new-tokens", "6")
    assert code == 0, err
    model, tok = load_model("clan-bot", device="cpu")  # saved by name in the models folder, chat-ready
    assert model.chat_template == "alpaca" and (models_dir() / "clan-bot" / "metrics.jsonl").is_file()
    train = split_examples(load_examples(data, tok), seed=123)["train"]
    right = sum(answer(model, tok, e.messages[:-1]) == e.messages[-1]["content"] for e in train)
    assert right >= 0.9 * len(train), f"{right} of {len(train)} answered"
    rows = json.loads((tmp_path / "xdg" / "gpt2tui" / "runs" / "clan-bot" / "test-responses.json").read_text())
    assert len(rows) == 2 and {"instruction", "input", "output", "model_response"} <= set(rows[0])


def test_a_batch_whose_activations_cannot_fit_is_refused_before_the_first_step(tmp_path, capsys, monkeypatch):
    from gpt2tui.training import loop

    monkeypatch.setattr(loop, "_available_memory", lambda: 2**10)  # 1 KiB "free"
    base = tiny_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "clans.jsonl", instruction_records())
    code, _, err = run_cli(capsys, "finetune", "--data", data, "--base", base, "--out", tmp_path / "bot", "--epochs",
                           "1", "--batch-size", "8", "--max-new-tokens", "1")
    assert code == 1 and "Traceback" not in err
    assert "a batch of 8 sequences of" in err and "for the activations its backward keeps, and 1 KiB of memory is free" in err
    assert not (tmp_path / "bot").exists()


def test_lora_trains_only_adapters_and_merges_to_the_same_logits():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(**TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 50257, (2, 16))
    for _ in range(3):
        model(x, targets=x)[1].backward()
        opt.step()
        opt.zero_grad()
    state = model.state_dict()
    for k, v in before.items():  # every base weight untouched
        assert torch.equal(state.get(k, state.get(k.replace(".weight", ".base.weight").replace(".bias", ".base.bias"))), v)
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        merge_lora(model)
        merged = model(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(before)  # a plain GPT-2 again
    assert not torch.equal(merged, GPT2(GPT2Config(**TINY)).eval()(x))
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_lora_command_saves_adapter_or_merged_model_and_evaluate_reports(tmp_path, capsys):
    base = tiny_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "clans.jsonl", instruction_records())
    common = ["--data", data, "--base", base, "--epochs", "1", "--lora", "--lora-rank", "2", "--batch-size", "8",
              "--test-responses", "1", "--max-new-tokens", "3"]
    code, out, err = run_cli(capsys, "finetune", *common, "--out", tmp_path / "adapter")
    assert code == 0, err
    said = " ".join((out + err).split())  # the chat loads an adapter: the message says so, not "needs --merge"
    assert "chat with it: gpt2tui --model" in said and "for a model the chat loads" not in said
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter.safetensors"}
    code, _, err = run_cli(capsys, "finetune", *common, "--merge", "--out", tmp_path / "merged")
    assert code == 0, err
    merged, _ = load_model(tmp_path / "merged", device="cpu")
    assert merged.chat_template == "alpaca" and not any(isinstance(m, LoRALinear) for m in merged.modules())
    # The adapter alone is chat-ready too: gpt2tui's loader folds it into its base, the logits those of the
    # adapted model (training's own loader keeps the adapters as modules).
    from gpt2tui.training.lora import load_adapted

    folded, _ = load_model(tmp_path / "adapter", device="cpu")
    adapted, _ = load_adapted(tmp_path / "adapter", device="cpu")
    assert folded.chat_template == "alpaca" and isinstance(folded, GPT2)
    x = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), adapted(x), atol=1e-5, rtol=1e-5)

    out = tmp_path / "outputs"
    code, stdout, err = run_cli(capsys, "evaluate", "--model", tmp_path / "adapter", "--data", data, "--out", out,
                                "--samples", "1", "--max-new-tokens", "3")
    assert code == 0, err
    assert "perplexity" in stdout and "test" in stdout
    for name in ("evaluation.json", "loss-plot.pdf", "loss-plot.png", "accuracy-plot.pdf", "sample_generations.txt"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["splits"]) == {"train", "val", "test"} and report["scored_on"] == "response tokens"
    assert 0.0 <= report["splits"]["test"]["acc"] <= 1.0


def test_finetune_refuses_a_context_longer_than_the_model(tmp_path, capsys):
    base = tiny_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "d.jsonl", instruction_records())
    code, _, err = run_cli(capsys, "finetune", "--data", data, "--base", base, "--out", "x", "--context-length", "65")
    assert code == 1 and "--context-length 65" in err
    assert not (models_dir() / "x").exists()
    code, _, err = run_cli(capsys, "finetune", "--data", data, "--base", base, "--out", "x", "--merge")
    assert code == 1 and "--lora" in err


@pytest.mark.parametrize("mask", [True, False])
def test_evaluate_scores_response_tokens_of_instruction_data(tmp_path, mask):
    from gpt2tui.training.data import InstructionData

    tok = Tokenizer()
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", instruction_records()[:4]), tok)
    data = InstructionData({"train": examples, "val": [], "test": []}, 4, 0, tok.eot_token, mask_prompt=mask)
    (x, y), = data.eval_batches("train", 10, response_only=True)
    answer_tokens = sum(sum(e.learn[1:]) for e in examples)
    assert int((y != -100).sum()) == answer_tokens
