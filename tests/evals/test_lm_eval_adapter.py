"""The lm-evaluation-harness adapter against the harness's own `hf` model on the same weights, on local YAML tasks and
local data files (no hub): every request's answer and every score agree, for all four request types."""

from __future__ import annotations

import json
import math

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt2tui.cli import main  # noqa: E402
from gpt2tui.evals.lm_eval_adapter import GPT2TUILM  # noqa: E402

SCENES = [
    (
        "A man is standing on a ladder. He",
        [" paints the wall.", " falls asleep.", " eats a sandwich quickly now."],
        0,
    ),
    ("The dog runs in the park and", [" barks.", " catches the ball in the air.", " sleeps."], 1),
    ("She opens the oven, then", [" takes out the bread.", " sings.", " closes it again."], 2),
]
PASSAGES = [
    "the old man walked slowly down the road towards the sea",
    "after the long winter the farmers were finally able to plant their seeds in the field",
    "he picked up the phone and called his mother",
]
PAGES = [
    " = Alpha = \n Alpha is the first letter of the Greek alphabet , used in many fields of science . \n",
    " = Beta = \n Beta follows alpha . " * 12,  # longer than the window: several rolling windows
]
PROMPTS = ["Once upon a time", "The capital of France is", "1, 2, 3,"]


def _write_tasks(root):
    (root / "mc.jsonl").write_text(
        "".join(json.dumps({"ctx": c, "endings": e, "label": k}) + "\n" for c, e, k in SCENES)
    )
    (root / "lambada.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PASSAGES))
    (root / "pages.jsonl").write_text("".join(json.dumps({"page": p}) + "\n" for p in PAGES))
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"text": p, "answer": " x"}) + "\n" for p in PROMPTS)
    )
    tasks = {
        "local_mc": f"""
task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {root / "mc.jsonl"}
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
""",
        "local_lambada": f"""
task: local_lambada
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "lambada.jsonl"}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
        "local_pages": f"""
task: local_pages
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "pages.jsonl"}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
""",
        "local_gen": f"""
task: local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "prompts.jsonl"}
output_type: generate_until
test_split: test
doc_to_text: "{{{{text}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""",
    }
    for name, text in tasks.items():
        (root / f"{name}.yaml").write_text(text)
    return list(tasks)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("harness-tasks")
    return root, _write_tasks(root)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        # Nothing may reach for the hub: the tasks and the model are local.
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield mp


def _run(lm, root, names):
    manager = TaskManager(
        include_path=str(root), include_defaults=False
    )  # the built-in tasks take seconds to index
    return lm_eval.simple_evaluate(
        model=lm, tasks=names, task_manager=manager, log_samples=True, bootstrap_iters=0
    )


def test_every_request_and_score_equals_the_harness_hf_model(task_dir, ours, hf):
    root, names = task_dir
    theirs = _run(
        HFLM(pretrained=hf[0], tokenizer=hf[1], batch_size=1, max_length=hf[0].config.n_positions),
        root,
        names,
    )
    mine = _run(GPT2TUILM(ours[0], tokenizer=ours[1], batch_size=4), root, names)
    for name in names:
        a, b = mine["samples"][name], theirs["samples"][name]
        assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b]
        for x, y in zip(a, b, strict=True):
            for rx, ry in zip(x["resps"], y["resps"], strict=True):
                if isinstance(ry[0], str):
                    assert rx == ry  # generate_until: the same text
                elif isinstance(ry[0], tuple | list):  # loglikelihood: (logprob, is_greedy)
                    assert rx[0][0] == pytest.approx(ry[0][0], abs=1e-4) and rx[0][1] == ry[0][1]
                else:  # loglikelihood_rolling: the document's logprob
                    assert rx[0] == pytest.approx(ry[0], abs=1e-4)
        for metric, value in theirs["results"][name].items():
            if isinstance(value, float) and math.isfinite(value):
                assert mine["results"][name][metric] == pytest.approx(value, rel=1e-5), (name, metric)
    assert len(ours[1].encode(PAGES[1])) > 2 * hf[0].config.n_positions  # the long page took several windows


def test_the_command_registers_the_adapter_and_writes_the_harness_result(
    task_dir, model_dir, tmp_path, capsys
):
    root, _ = task_dir
    out = tmp_path / "out"
    argv = ["evaluate", "--harness", "local_lambada", "--include-path", str(root), "--model", str(model_dir)]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "harness.json").read_text())
    assert set(report["results"]["local_lambada"]) >= {"acc,none", "perplexity,none"}
    assert "local_lambada" in capsys.readouterr().out
