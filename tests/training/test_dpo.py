"""`gpt2tui dpo`: the loss against its formula and against trl, the command end to end, bad records, LoRA's memory."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2tui import GPT2, GPT2Config, Tokenizer, load_model
from gpt2tui.chat import TEMPLATES
from gpt2tui.training import preferences
from gpt2tui.training.dpo import DPO, batch_stats, cache_reference, dpo_loss, sequence_logps
from gpt2tui.training.lora import LoRAConfig, adapters_disabled, apply_lora
from gpt2tui.training.preferences import PairBatch, collate_pairs, load_pairs
from gpt2tui.training.synthetic import preference_records
from gpt2tui.weights import load_weights, save_checkpoint
from gpt2tui_testkit.training import TINY, dpo_argv, metrics, run_cli, tiny_model_dir, write_jsonl

BETA = 0.1


def test_loss_and_rewards_equal_the_formula():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 20 - 60 for _ in range(4))
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, BETA)
    for i in range(6):
        margin = BETA * (pc[i] - rc[i]) - BETA * (pr[i] - rr[i])
        assert losses[i].item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin))), abs=1e-12)
        assert chosen[i].item() == pytest.approx(BETA * (pc[i] - rc[i]).item(), abs=1e-12)
        assert rejected[i].item() == pytest.approx(BETA * (pr[i] - rr[i]).item(), abs=1e-12)


def test_a_batch_scores_only_the_replies_and_matches_the_formula(tmp_path):
    torch.manual_seed(0)
    policy, reference = (GPT2(GPT2Config(**{**TINY, "context_length": 128})) for _ in range(2))
    tok = Tokenizer()
    pairs, _ = load_pairs(
        write_jsonl(tmp_path / "p.jsonl", preference_records(3)), tok, TEMPLATES["alpaca"], 128
    )
    for p in pairs:  # each side's ids: the prompt, then what it learns (reply + end token)
        assert p.chosen.ids[: p.chosen.learn.index(True)] == p.rejected.ids[: p.rejected.learn.index(True)]
    cache_reference(reference, pairs, 2, tok.eot_token, torch.device("cpu"))
    batch = collate_pairs(pairs, tok.eot_token)
    loss, stats = batch_stats(policy.eval(), batch, BETA, torch.device("cpu"))

    def logp(model, side):  # the whole logits, log-softmax, the reply's tokens picked by hand
        ids = torch.tensor(side.ids)
        logprobs = F.log_softmax(model(ids[None, :-1])[0].double(), -1)  # (T, V)
        return sum(logprobs[t - 1, ids[t]].item() for t in range(1, len(ids)) if side.learn[t])

    with torch.no_grad():
        direct = [[logp(m, p.chosen), logp(m, p.rejected)] for p in pairs for m in (policy, reference)]
    direct = torch.tensor(direct).view(3, 2, 2)  # pair, model (policy, reference), side (chosen, rejected)
    for i, p in enumerate(pairs):
        assert p.ref == pytest.approx(tuple(direct[i, 1].tolist()), abs=2e-3)
    chosen_r = BETA * (direct[:, 0, 0] - direct[:, 1, 0])
    rejected_r = BETA * (direct[:, 0, 1] - direct[:, 1, 1])
    losses = -F.logsigmoid(chosen_r - rejected_r)
    assert loss.item() == pytest.approx(losses.mean().item(), abs=1e-4)
    fields = DPO(BETA).train_fields(stats)
    assert fields["train_chosen_reward"] == pytest.approx(chosen_r.mean().item(), abs=1e-4)
    assert fields["train_margin"] == pytest.approx((chosen_r - rejected_r).mean().item(), abs=1e-4)
    assert fields["train_pref_acc"] == (chosen_r > rejected_r).double().mean().item()
    assert fields["train_chosen_logp"] == pytest.approx(direct[:, 0, 0].mean().item(), abs=1e-3)


def test_the_loss_equals_trl_dpo_trainer_on_the_same_model_and_batch(tmp_path):
    """trl's own DPOTrainer (its collator and `compute_loss`, reference model given) on a tiny Hugging Face GPT-2, and
    ours on the same weights loaded by gpt2tui, on the very batch trl collated."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from gpt2tui_testkit.hf import hf_gpt2

    words = "<eos> <unk> what is two plus three five six it answer the question ugh fine".split()
    core = HFTokenizer(WordLevel({w: 1000 + i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")
    rows = [
        {"prompt": "what is two plus three", "chosen": " five", "rejected": " ugh fine six"},
        {"prompt": "answer the question", "chosen": " it is five", "rejected": " ugh"},
        {"prompt": "two plus two", "chosen": " fine it is six", "rejected": " what"},
    ]
    policy_hf, reference_hf = hf_gpt2(seed=0, initializer_range=0.02), hf_gpt2(seed=1, initializer_range=0.02)
    policy_hf.save_pretrained(tmp_path / "policy")
    reference_hf.save_pretrained(tmp_path / "reference")
    # float32 throughout: no bf16 autocast, which accelerate would otherwise wrap the models in
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        report_to=[],
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=3,
        precompute_ref_log_probs=False,
        logging_steps=1,
    )
    trainer = trl.DPOTrainer(
        model=policy_hf,
        ref_model=reference_hf,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=hf_tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch).item()
    trl_chosen = trainer._metrics["train"]["rewards/chosen"][-1]
    trl_margin = trainer._metrics["train"]["rewards/margins"][-1]

    ids, completion = batch["input_ids"], batch["completion_mask"]  # (2B, L): chosen rows first, as ours
    x, y = ids[:, :-1], ids[:, 1:].masked_fill(completion[:, 1:] == 0, -100)  # (2B, L-1)
    policy, reference = load_weights(tmp_path / "policy"), load_weights(tmp_path / "reference")
    with torch.no_grad():
        ref = sequence_logps(reference.eval(), x, y)  # (2B,)
        loss, stats = batch_stats(policy.eval(), PairBatch(x, y, ref), BETA, torch.device("cpu"))
    fields = DPO(BETA).train_fields(stats)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(trl_loss, abs=1e-5)
    assert fields["train_chosen_reward"] == pytest.approx(trl_chosen, abs=1e-5)
    assert fields["train_margin"] == pytest.approx(trl_margin, abs=1e-5)


def test_the_reference_of_a_lora_model_is_the_model_with_its_adapters_off():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(**TINY)).eval()
    x = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        base = model(x)
        apply_lora(model, LoRAConfig(rank=2, alpha=4, dropout=0.0))
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()
        adapted = model(x)
        with adapters_disabled(model):
            off = model(x)
        again = model(x)
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(off, base, rtol=0, atol=0)
    torch.testing.assert_close(again, adapted, rtol=0, atol=0)


@pytest.mark.slow  # ~25 s on two busy cores: three short runs of a tiny model and one evaluation
def test_dpo_raises_validation_preference_accuracy_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    base = tiny_model_dir(tmp_path / "base")
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(32, seed=3))
    code, _, err = run_cli(capsys, *dpo_argv(data, base, tmp_path / "tuned"))
    assert code == 0, err
    run = tmp_path / "xdg" / "gpt2tui" / "runs" / "tuned"
    rows = metrics(run)
    start, evals = rows[0], [r for r in rows if "val_margin" in r]
    assert start["step"] == 0 and start["val_margin"] == 0.0 and start["val_pref_acc"] == 0.0
    assert start["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert evals[-1]["val_pref_acc"] > start["val_pref_acc"] and evals[-1]["val_margin"] > 0.0
    assert evals[-1]["val_margin"] > evals[1]["val_margin"]
    fields = {
        "train_loss",
        "train_chosen_reward",
        "train_rejected_reward",
        "train_margin",
        "train_pref_acc",
        "train_chosen_logp",
        "train_rejected_logp",
    }
    assert fields <= set(rows[-1]) and {f.replace("train", "val") for f in fields} <= set(rows[-1])
    model, _ = load_model(tmp_path / "tuned", device="cpu")
    assert json.loads((tmp_path / "tuned" / "dpo.json").read_text())["beta"] == 0.1

    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        capsys,
        "evaluate",
        "--model",
        tmp_path / "tuned",
        "--data",
        data,
        "--out",
        out,
        "--samples",
        "1",
        "--max-new-tokens",
        "2",
    )
    assert code == 0, err
    report = json.loads((out / "evaluation.json").read_text())
    assert report["splits"]["val"]["margin"] == pytest.approx(evals[-1]["val_margin"], abs=1e-4)
    for name in ("loss-plot", "margin-plot", "preference-accuracy-plot"):
        for suffix in (".pdf", ".png"):
            assert (out / f"{name}{suffix}").stat().st_size > 0

    real = preferences.PreferenceData.train_batch

    def interrupt_at_step_4(self, k, rank=0, world=1):
        if k == 4:
            raise KeyboardInterrupt
        return real(self, k, rank, world)

    monkeypatch.setattr(preferences.PreferenceData, "train_batch", interrupt_at_step_4)
    code, _, err = run_cli(capsys, *dpo_argv(data, base, tmp_path / "part"))
    assert code == 130 and "--resume" in err
    monkeypatch.setattr(preferences.PreferenceData, "train_batch", real)
    code, _, err = run_cli(capsys, *dpo_argv(data, base, tmp_path / "part", "--resume"))
    assert code == 0, err
    resumed = metrics(tmp_path / "xdg" / "gpt2tui" / "runs" / "part")
    assert [r["step"] for r in resumed] == [r["step"] for r in rows]
    for a, b in zip(rows, resumed, strict=True):
        assert a.get("train_loss") == pytest.approx(b.get("train_loss"), abs=1e-6), a["step"]
        assert a.get("val_margin") == pytest.approx(b.get("val_margin"), abs=1e-6), a["step"]


def test_bad_records_are_named_with_file_and_line_and_skipped_or_refused(tmp_path, capsys):
    good = preference_records(6)
    bad = [
        {"instruction": None, "input": "", "chosen": "a", "rejected": "b"},
        {"instruction": "Say hi.", "rejected": "no"},
        {"instruction": "Say hi.", "chosen": "hi", "rejected": "hi"},
        {"instruction": "word " * 80, "chosen": "hi", "rejected": "no"},
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", [good[0], *bad, *good[1:]])
    pairs, skipped = load_pairs(path, Tokenizer(), TEMPLATES["plain"], 64)
    assert len(pairs) == 6 and len(skipped) == 4
    assert skipped[0] == f"{path}:2: field 'instruction' is null; give it as a string"
    assert skipped[1].startswith(f"{path}:3: record has no 'chosen' field")
    assert skipped[2].startswith(f"{path}:4: 'chosen' and 'rejected' are the same reply")
    assert skipped[3].startswith(f"{path}:5: the pair is ") and "over --max-length 64" in skipped[3]

    base = tiny_model_dir(tmp_path / "base")
    code, _, err = run_cli(capsys, "dpo", "--data", path, "--base", base, "--out", tmp_path / "x", "--strict")
    assert code == 1 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            f"{path}:2: field 'instruction' is null; give it as a string "
            "(--strict refuses the file; without it such records are skipped)"
        )
    )
    assert not (tmp_path / "x").exists()


RSS_CHILD = textwrap.dedent("""
    import sys
    def status(key):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) * 1024
    import torch
    from gpt2tui.cli import main
    before = status("VmRSS:")
    code = main(sys.argv[1:])
    print("PEAK", code, status("VmHWM:") - before)
""")


@pytest.mark.slow  # ~20 s: a 124M-shaped model written, loaded and stepped once
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_lora_dpo_holds_one_model_not_two(tmp_path):
    from gpt2tui.config import PRESETS

    torch.manual_seed(0)
    model = GPT2(GPT2Config(**PRESETS["gpt2"]))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    save_checkpoint(model, tmp_path / "base")
    del model
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(8))
    argv = [
        "dpo",
        "--data",
        data,
        "--base",
        tmp_path / "base",
        "--out",
        tmp_path / "out",
        "--lora",
        "--batch-size",
        "1",
        "--epochs",
        "0.2",
        "--eval-every",
        "0",
        "--max-new-tokens",
        "1",
        "--device",
        "cpu",
    ]
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(Path(__file__).parents[2]),
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PEAK")), None)
    assert line is not None and line.split()[1] == "0", proc.stderr[-2000:]
    peak = int(line.split()[2])
    # Above what the process held once torch was imported: the model, its steps and its saves, not two models.
    assert peak < 2 * weights, f"peak {peak >> 20} MiB, two models' weights {2 * weights >> 20} MiB"
    assert (tmp_path / "out" / "adapter.safetensors").is_file()
