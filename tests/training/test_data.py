"""Token shards, instruction loading, the split, collate and masking, on hand-made inputs."""

import json

import numpy as np
import pytest
import torch

from gpt2tui import Tokenizer
from gpt2tui.chat import TEMPLATES, encode_conversation, format_instruction
from gpt2tui.errors import DataError
from gpt2tui.training.data import (
    Example,
    InstructionData,
    PretrainData,
    collate,
    load_examples,
    prepare_corpus,
    split_exact,
    split_examples,
)
from gpt2tui_testkit.training import instruction_records, run_cli, write_jsonl, write_story

EOT = 50256


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def ex(ids, learn=None):
    return Example(list(ids), list(learn) if learn is not None else [True] * len(ids), [], "hand-made")


def test_collate_pads_with_end_token_and_ignores_past_the_first_one():
    x, y = collate([ex([1, 2, 3, EOT]), ex([5, 6, EOT]), ex([7, EOT])], pad_id=EOT)
    assert x.tolist() == [[1, 2, 3], [5, 6, EOT], [7, EOT, EOT]]
    assert y.tolist() == [[2, 3, EOT], [6, EOT, -100], [EOT, -100, -100]]


def test_collate_mask_prompt_keeps_only_the_learned_targets():
    batch = [ex([1, 2, 3, 4, EOT], [False, False, False, True, True]), ex([5, 6, EOT], [False, True, True])]
    x, y = collate(batch, pad_id=EOT, mask_prompt=True)
    assert x.tolist() == [[1, 2, 3, 4], [5, 6, EOT, EOT]]
    assert y.tolist() == [[-100, -100, 4, EOT], [6, EOT, -100, -100]]
    _, y_all = collate(batch, pad_id=EOT, mask_prompt=False)
    assert y_all.tolist() == [[2, 3, 4, EOT], [6, EOT, -100, -100]]


def test_records_render_with_the_chat_template_token_for_token(tmp_path, tok):
    records = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
               {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                             {"role": "assistant", "content": "Farewell."}]}]
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", records), tok)
    first = examples[0]
    assert tok.decode(first.ids[:-1]) == format_instruction("Add the numbers.", "2 and 3", "5")
    assert first.ids[-1] == EOT
    assert tok.decode([i for i, keep in zip(first.ids, first.learn, strict=False) if keep]) == "5<|endoftext|>"
    ids, learn = encode_conversation(tok, records[1]["messages"], TEMPLATES["alpaca"])
    assert (examples[1].ids, examples[1].learn) == (ids, learn)
    learned = tok.decode([i for i, keep in zip(ids, learn, strict=False) if keep])
    assert "Hello." in learned and "Farewell." in learned and "Bye" not in learned


def test_json_list_records_get_their_line_numbers(tmp_path, tok):
    good = instruction_records()[:2]
    text = "[\n" + json.dumps(good[0], indent=1) + ",\n" + '{"instruction": "x",\n "input": ""}\n]'
    path = tmp_path / "list.json"
    path.write_text(text)
    line = text.split("\n").index('{"instruction": "x",') + 1
    with pytest.raises(DataError, match=rf"list\.json:{line}: record has no 'output' field"):
        load_examples(path, tok)


@pytest.mark.parametrize("body, where, what", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', ":2:", "malformed JSON"),
    ('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n', ":3:", "no 'output' field"),
    ('{"instruction": "a", "output": 7}\n', ":1:", "field 'output' must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', ":1:", "must end with an assistant message"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n', ":1:", "role 'bot'"),
    ('[1, 2]\n', ":1:", "expected a JSON object"),
    ('[{"instruction": "a", "output": "b"} {"x": 1}]', ":1:", "malformed JSON"),
])
def test_bad_instruction_records_name_file_line_and_field(tmp_path, tok, capsys, body, where, what):
    path = tmp_path / "bad.jsonl"
    path.write_text(body)
    with pytest.raises(DataError) as e:
        load_examples(path, tok)
    assert f"bad.jsonl{where}" in str(e.value) and what in str(e.value)
    # Through the command: one line on stderr, exit 1, no traceback, nothing saved.
    code, _, err = run_cli(capsys, "finetune", "--data", path, "--base", tmp_path / "nomodel", "--out", tmp_path / "m")
    assert code == 1 and "Traceback" not in err


def test_split_is_seeded_85_5_10_and_disjoint():
    items = list(range(100))
    a, b = split_examples(items, seed=1), split_examples(items, seed=1)
    assert a == b and {k: len(v) for k, v in a.items()} == {"train": 85, "test": 10, "val": 5}
    assert sorted(a["train"] + a["val"] + a["test"]) == items
    assert split_examples(items, seed=2)["train"] != a["train"]


def test_length_buckets_cover_every_example_once_per_epoch():
    examples = [ex([1] * n + [EOT]) for n in range(1, 41)]
    data = InstructionData({"train": examples, "val": [], "test": []}, batch_size=4, seed=0, pad_id=EOT)
    batches = data.epoch_batches(0)
    assert sorted(i for b in batches for i in b) == list(range(40))
    # Within a bucket examples are sorted by length, so a batch holds neighbours: little padding.
    assert max(max(len(examples[i].ids) for i in b) - min(len(examples[i].ids) for i in b) for b in batches) <= 8
    assert data.epoch_batches(1) != batches
    x, y = data.train_batch(0)
    assert x.shape == y.shape and x.shape[0] == 4


def test_split_exact_tokenises_like_the_whole_text(tok):
    text = ("Line one.\nLine two  \n\n  indented\n'tis\nend\n\n\n" * 50) + "tail"
    pieces = split_exact(text, size=100)
    assert len(pieces) > 5 and "".join(pieces) == text
    assert [i for p in pieces for i in tok.encode_ordinary(p)] == tok.encode_ordinary(text)


def test_corpus_shards_are_written_once_and_memory_mapped(tmp_path, tok):
    a = write_story(tmp_path / "a.txt")
    (tmp_path / "more").mkdir()
    b = write_story(tmp_path / "more" / "b.md", repeat=1)
    corpus = prepare_corpus([a, tmp_path / "more"], tmp_path / "tokens", tok, val_fraction=0.1)
    want = tok.encode_ordinary(a.read_text()) + [EOT] + tok.encode_ordinary(b.read_text()) + [EOT]
    got = np.concatenate([corpus.train.slice(0, len(corpus.train)), corpus.val.slice(0, len(corpus.val))])
    assert got.tolist() == want and isinstance(corpus.train.shards[0], np.memmap)
    assert len(corpus.val) == round(len(want) * 0.1)
    manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    assert manifest["tokens"] == len(want) and len(manifest["sources"]) == 2
    shard = tmp_path / "tokens" / manifest["shards"][0]["file"]
    mtime = shard.stat().st_mtime_ns
    prepare_corpus([a, tmp_path / "more"], tmp_path / "tokens", tok)  # same sources: reused
    assert shard.stat().st_mtime_ns == mtime
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="empty"):
        prepare_corpus([tmp_path / "empty.txt"], tmp_path / "tokens2", tok)
    with pytest.raises(DataError, match="no such file"):
        prepare_corpus([tmp_path / "missing.txt"], tmp_path / "tokens3", tok)


def test_ranks_read_disjoint_halves_of_the_global_batch():
    tokens = np.arange(1000, dtype=np.uint16)
    data = PretrainData(tokens, tokens[:100], context_length=16, batch_size=4, seed=3)
    half = PretrainData(tokens, tokens[:100], context_length=16, batch_size=2, seed=3)
    for k in range(3):
        x, y = data.train_batch(k)
        x0, _ = half.train_batch(k, rank=0, world=2)
        x1, _ = half.train_batch(k, rank=1, world=2)
        assert torch.equal(torch.cat([x0, x1]), x)
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    with pytest.raises(DataError, match="context-length"):
        PretrainData(tokens[:10], tokens[:5], context_length=16, batch_size=2, seed=0)
