"""`gpt2tui evaluate --task`: each task's score equals a plain transformers computation of the same definition, on
small files in the task's own formats that the tests write (random-weight GPT-2, so every figure is arbitrary but
exactly determined)."""

from __future__ import annotations

import gzip
import json
import math
import random
import re

import pytest
import torch

from gpt2tui.cli import main
from gpt2tui.evals import lambada, tasks, wikitext
from gpt2tui.training import cli as training_cli

WORDS = (
    "the a man woman dog cat runs walks opens closes door window car snow ladder paints wall bread oven ball park "
    "sings sleeps quickly slowly then and after before red blue green house river mountain"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _evaluate(model_dir, tmp_path, task: str, data, *extra: str) -> dict:
    out = tmp_path / "out"
    argv = ["evaluate", "--task", task, "--model", str(model_dir), "--data", str(data), "--device", "cpu"]
    assert main([*argv, "--out", str(out), "--batch-size", "5", *extra]) == 0
    return json.loads((out / f"{task}.json").read_text())


# -- HellaSwag -------------------------------------------------------------------------------------------------------


def _hellaswag_records(rng: random.Random, n: int) -> list[dict]:
    records = []
    for i in range(n):
        ctx_a, ctx_b = _sentence(rng, rng.randint(5, 30)) + ".", _sentence(rng, 3)
        endings = [_sentence(rng, rng.randint(2, 12)) + "." for _ in range(4)]
        endings[0] = "[title] " + endings[0]  # a WikiHow artefact, which lm-eval's variant cleans away
        label = "Removing ice [header] from car"
        records.append(
            dict(
                ind=i,
                activity_label=label,
                ctx_a=ctx_a,
                ctx_b=ctx_b,
                ctx=f"{ctx_a} {ctx_b}",
                split="val",
                split_type="indomain",
                label=0,
                endings=endings,
                source_id=f"x~{i}",
            )
        )
    return records


def _hf_hellaswag_predictions(records, hf, hf_score) -> dict[str, list[int]]:
    """Each method's chosen ending, computed with transformers and lm-eval's own `preprocess`."""
    utils = pytest.importorskip(
        "lm_eval.tasks.hellaswag.utils", reason="the eval extra (lm-eval) is not installed"
    )
    tok = hf[1]
    preds: dict[str, list[int]] = {"acc": [], "acc_norm": [], "lm_eval_acc": [], "lm_eval_acc_norm": []}
    for r in records:
        ctx = tok.encode(r["ctx"])
        scored = [hf_score(ctx, tok.encode(" " + e))[0] for e in r["endings"]]
        lengths = [len(tok.encode(" " + e)) for e in r["endings"]]
        preds["acc"].append(max(range(4), key=lambda k: scored[k]))
        preds["acc_norm"].append(max(range(4), key=lambda k: scored[k] / lengths[k]))
        query = utils.preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
        choices = [utils.preprocess(e) for e in r["endings"]]
        lm = []
        for choice in choices:
            whole, head = tok.encode(query + " " + choice), tok.encode(query)
            lm.append(hf_score(head, whole[len(head) :])[0])
        preds["lm_eval_acc"].append(max(range(4), key=lambda k: lm[k]))
        preds["lm_eval_acc_norm"].append(max(range(4), key=lambda k: lm[k] / len(choices[k])))
    return preds


@pytest.mark.parametrize("fmt", ["original jsonl", "hugging face parquet"])
def test_hellaswag_equals_transformers(fmt, model_dir, hf, hf_score, tmp_path):
    records = _hellaswag_records(random.Random(3), 8)
    preds = _hf_hellaswag_predictions(records, hf, hf_score)
    for r, k in zip(records, preds["acc_norm"], strict=True):
        r["label"] = k  # so acc_norm is 1.0 exactly when every example's choice is transformers'
    if fmt == "original jsonl":
        data = tmp_path / "hellaswag_val.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq = pytest.importorskip("pyarrow.parquet", reason="the data extra (pyarrow) is not installed")
        pa = pytest.importorskip("pyarrow")
        data = tmp_path / "validation-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist([{**r, "label": str(r["label"])} for r in records]), data)
    report = _evaluate(model_dir, tmp_path, "hellaswag", data)
    assert report["metrics"]["acc_norm"] == 1.0
    for metric, chosen in preds.items():
        want = sum(p == r["label"] for p, r in zip(chosen, records, strict=True)) / len(records)
        assert report["metrics"][metric] == pytest.approx(want), metric
    assert report["examples"] == 8 and report["settings"]["data"] == str(data)


def test_hellaswag_limit_takes_the_first_examples(model_dir, tmp_path):
    data = tmp_path / "hellaswag_val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _hellaswag_records(random.Random(4), 6)))
    report = _evaluate(model_dir, tmp_path, "hellaswag", data, "--limit", "2")
    assert report["examples"] == 2 and report["settings"]["limit"] == 2


# -- LAMBADA ---------------------------------------------------------------------------------------------------------


def _passages(rng: random.Random, n: int) -> list[str]:
    return [_sentence(rng, rng.randint(4, 70)) for _ in range(n)]  # some longer than the window


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_lambada_equals_transformers(fmt, model_dir, hf, hf_score, tmp_path):
    passages = _passages(random.Random(5), 9)
    tok = hf[1]
    lls, greedy, n_tokens = [], [], 0
    for text in passages:
        context, word = text.rsplit(" ", 1)
        whole, head = tok.encode(context + " " + word), tok.encode(context)
        ll, g = hf_score(head, whole[len(head) :])
        lls.append(ll)
        greedy.append(g)
        n_tokens += len(whole) - len(head)
    if fmt == "jsonl":
        data = tmp_path / "lambada_test.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in passages))
    else:
        data = tmp_path / "lambada_test_plain_text.txt"
        data.write_text("\n".join(passages) + "\n")
    report = _evaluate(model_dir, tmp_path, "lambada", data)
    assert report["metrics"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-5)
    assert report["metrics"]["token_perplexity"] == pytest.approx(math.exp(-sum(lls) / n_tokens), rel=1e-5)
    assert report["metrics"]["acc"] == pytest.approx(sum(greedy) / len(greedy))


# -- WikiText --------------------------------------------------------------------------------------------------------


def _article(rng: random.Random, title: str, paragraphs: int) -> str:
    lines = [f" = {title} = \n", " \n"]
    for p in range(paragraphs):
        lines += [
            f" = = Part {p} = = \n",
            " \n",
            f" {_sentence(rng, rng.randint(10, 60))} , 1 @,@ 000 ( x ) . \n",
            " \n",
        ]
    return "".join(lines)


def _hf_wikitext(pages: list[str], hf, stride: int) -> dict:
    """Sliding windows over `<|endoftext|>` + the detokenised article (Hugging Face's perplexity guide, per
    article): each window at most n_positions tokens, each token scored once, with lm-eval's detokeniser."""
    detok = pytest.importorskip(
        "lm_eval.tasks.wikitext.preprocess_wikitext", reason="the eval extra is not installed"
    )
    model, tok = hf
    window = model.config.n_positions
    nll, tokens = 0.0, 0
    for page in pages:
        seq = [tok.eos_token_id, *tok.encode(detok.wikitext_detokenizer({"page": page}))]
        n = len(seq) - 1
        done, end = 0, min(window, n)
        while done < n:
            start = max(0, end - window)
            with torch.no_grad():
                logits = model(torch.tensor([seq[start:end]])).logits[0].double()
            logprobs = torch.log_softmax(logits, -1)[-(end - done) :]  # the new tokens' predictions
            targets = torch.tensor(seq[done + 1 : end + 1])
            nll -= logprobs.gather(1, targets[:, None]).sum().item()
            tokens += end - done
            done, end = end, min(end + stride, n)
    words = sum(len(re.split(r"\s+", p)) for p in pages)
    return {"token_perplexity": math.exp(nll / tokens), "word_perplexity": math.exp(nll / words)}


@pytest.mark.parametrize(
    ("fmt", "stride"), [("raw", None), ("raw", 16), ("document jsonl.gz", None), ("line parquet", 20)]
)
def test_wikitext_equals_transformers(fmt, stride, model_dir, hf, tmp_path):
    rng = random.Random(6)
    pages = [_article(rng, "Alpha", 1), _article(rng, "Beta Gamma", 3), _article(rng, "Delta", 2)]
    if fmt == "raw":
        data = tmp_path / "wiki.test.raw"
        data.write_text(" \n" + "".join(pages))
    elif fmt == "document jsonl.gz":  # EleutherAI/wikitext_document_level: one article a record
        data = tmp_path / "test.jsonl.gz"
        with gzip.open(data, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"page": p}) + "\n" for p in pages)
    else:  # Salesforce/wikitext: one line a row, newline kept, "" for a blank line
        pq = pytest.importorskip("pyarrow.parquet", reason="the data extra (pyarrow) is not installed")
        pa = pytest.importorskip("pyarrow")
        rows = [{"text": line if line.strip() else ""} for line in "".join(pages).splitlines(keepends=True)]
        data = tmp_path / "test-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), data)
        pages = ["".join("\n" if x == " \n" else x for x in p.splitlines(keepends=True)) for p in pages]
    window = hf[0].config.n_positions
    report = _evaluate(
        model_dir, tmp_path, "wikitext-2", data, *(["--stride", str(stride)] if stride else [])
    )
    want = _hf_wikitext(pages, hf, stride or window)
    assert report["examples"] == 3
    for metric, value in want.items():
        assert report["metrics"][metric] == pytest.approx(value, rel=1e-5), metric
    assert report["method"]["stride"] == (stride or window) and "detokenizer" in report["method"]


def test_the_detokeniser_is_lm_evals():
    detok = pytest.importorskip(
        "lm_eval.tasks.wikitext.preprocess_wikitext", reason="the eval extra is not installed"
    )
    page = (
        _article(random.Random(7), "Title", 4)
        + " He said \" hello \" ; it 's 3 @.@ 5 N s ' [ a ] { b } 5 ° C \n"
    )
    assert wikitext.detokenize(page) == detok.wikitext_detokenizer({"page": page})


def test_a_raw_file_is_cut_at_level_one_headings():
    text = " \n = A = \n \n x \n = = B = = \n y \n = C = \n z \n"
    assert wikitext.split_articles(text) == [" = A = \n \n x \n = = B = = \n y \n", " = C = \n z \n"]


# -- the command -----------------------------------------------------------------------------------------------------


def test_the_command_knows_the_tasks():
    assert training_cli.TASKS == tasks.TASKS


def test_a_bad_record_is_named_in_one_line(model_dir, tmp_path, capsys):
    data = tmp_path / "hellaswag_val.jsonl"
    good = _hellaswag_records(random.Random(8), 2)
    data.write_text(json.dumps(good[0]) + "\n" + json.dumps({"ctx": "no endings", "label": 0}) + "\n")
    argv = ["evaluate", "--task", "hellaswag", "--model", str(model_dir), "--data", str(data)]
    assert main([*argv, "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert f"{data}:2" in err and "'endings'" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "hellaswag.json").exists()


def test_evaluate_without_data_or_task_says_what_to_pass(model_dir, capsys):
    assert main(["evaluate", "--model", str(model_dir)]) != 0
    err = capsys.readouterr().err
    assert "--data" in err and "--task" in err and "Traceback" not in err


def test_a_packed_model_is_scored_too(model_dir, tmp_path):
    data = tmp_path / "lambada_test.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _passages(random.Random(9), 4)))
    plain = _evaluate(model_dir, tmp_path / "plain", "lambada", data)
    packed = _evaluate(model_dir, tmp_path / "packed", "lambada", data, "--quantize", "bfloat16")
    assert packed["settings"]["quantization"] == "bfloat16" and plain["settings"]["quantization"] is None
    assert packed["metrics"]["token_perplexity"] == pytest.approx(
        plain["metrics"]["token_perplexity"], rel=0.02
    )


def test_without_data_the_task_loads_its_dataset_through_datasets(model_dir, tmp_path, monkeypatch):
    """The download path, offline: `datasets` reads a local folder laid out as the hub's dataset is."""
    pytest.importorskip("datasets", reason="the data extra (datasets) is not installed")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    hub = tmp_path / "EleutherAI-lambada_openai"
    hub.mkdir()
    (hub / "test.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in _passages(random.Random(10), 3))
    )
    monkeypatch.setattr(lambada, "HUB", (str(hub), None, "test"))
    out = tmp_path / "out"
    assert main(["evaluate", "--task", "lambada", "--model", str(model_dir), "--out", str(out)]) == 0
    report = json.loads((out / "lambada.json").read_text())
    assert report["examples"] == 3 and report["settings"]["data"] == f"datasets: {hub}, split test"
