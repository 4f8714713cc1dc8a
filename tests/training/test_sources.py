"""Pretraining data in every format: the tokens each gives, folders and globs of a mix, `hf:` through `datasets` on
local files, bad records named and skipped (or refused with --strict), and a tokenisation resumed after a Ctrl+C."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2tui import Tokenizer
from gpt2tui.errors import DataError
from gpt2tui.training import corpus as corpus_module
from gpt2tui.training import feed, readers, records, sources
from gpt2tui.training.corpus import prepare_corpus
from gpt2tui.training.data import load_examples
from gpt2tui.training.sources import Options
from gpt2tui_testkit import child_env
from gpt2tui_testkit.datafiles import documents, sized, write_format
from gpt2tui_testkit.training import instruction_records, metrics, pretrain_argv, run_cli, write_jsonl

EOT = 50256
FORMATS = ["txt", "jsonl", "json", "jsonl.gz", "jsonl.zst", "parquet"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of ~2,000 characters, each recorded, and text pieces of ~300: many batches and resume points from
    small files."""
    monkeypatch.setattr(feed, "BATCH_CHARS", 2000)
    monkeypatch.setattr(corpus_module, "CHECKPOINT_BYTES", 0)
    monkeypatch.setattr(records, "CHUNK_CHARS", 300)
    monkeypatch.setattr(readers, "READ_BYTES", 256)


def tokens(corpus) -> list[int]:
    return np.concatenate(
        [corpus.train.slice(0, len(corpus.train)), corpus.val.slice(0, len(corpus.val))]
    ).tolist()


def each_document(tok, docs) -> list[int]:
    return [i for d in docs for i in [*tok.encode_ordinary(d), EOT]]


def manifest(directory) -> dict:
    return json.loads((directory / "manifest.json").read_text())


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_its_documents_each_then_the_end_token(tmp_path, tok, fmt, small_batches):
    docs = documents(40)
    path = write_format(tmp_path / f"corpus.{fmt}", docs, fmt)
    corpus = prepare_corpus([path], tmp_path / "tokens", tok, val_fraction=0.1)
    want = tok.encode_ordinary("\n\n".join(docs)) + [EOT] if fmt == "txt" else each_document(tok, docs)
    assert tokens(corpus) == want
    assert manifest(tmp_path / "tokens")["documents"] == (1 if fmt == "txt" else 40)
    assert not (tmp_path / "tokens" / "progress.json").exists()


def test_a_long_text_streams_in_pieces_that_tokenise_like_the_whole(tmp_path, tok, small_batches):
    text = (
        "\n".join(documents(30, seed=1)) + "\n  Café 日本語 🙂\n\n\n   x\n" + "\n".join(documents(30, seed=2))
    )
    plain = tmp_path / "long.txt"
    plain.write_text(text, encoding="utf-8")
    packed = tmp_path / "long.txt.gz"
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    for i, path in enumerate([plain, packed]):
        assert tokens(prepare_corpus([path], tmp_path / f"t{i}", tok)) == tok.encode_ordinary(text) + [EOT]


def test_folders_and_globs_read_a_mix_in_order_and_skip_the_rest(tmp_path, tok):
    a, b, c, e = (documents(5, seed=s) for s in range(4))
    write_format(tmp_path / "d" / "a.txt", a, "txt")
    write_format(tmp_path / "d" / "b.jsonl.gz", b, "jsonl.gz")
    write_format(tmp_path / "d" / "sub" / "c.parquet", c, "parquet")
    write_format(tmp_path / "d" / ".hidden" / "x.txt", ["hidden"], "txt")
    (tmp_path / "d" / "notes.csv").write_text("not,data\n")
    write_format(tmp_path / "extra" / "e.jsonl", e, "jsonl")
    corpus = prepare_corpus([tmp_path / "d", str(tmp_path / "extra" / "*.jsonl")], tmp_path / "tokens", tok)
    want = tok.encode_ordinary("\n\n".join(a)) + [EOT] + each_document(tok, b + c + e)
    assert tokens(corpus) == want
    names = [s["path"].rsplit("/", 1)[1] for s in manifest(tmp_path / "tokens")["sources"]]
    assert names == ["a.txt", "b.jsonl.gz", "c.parquet", "e.jsonl"]


def test_text_field_chooses_the_field(tmp_path, tok):
    docs = documents(6)
    path = write_format(tmp_path / "c.jsonl", docs, "jsonl", field="content")
    corpus = prepare_corpus([path], tmp_path / "tokens", tok, options=Options(text_field="content"))
    assert tokens(corpus) == each_document(tok, docs)
    with pytest.raises(DataError, match=r"no column 'body' \(columns: text, id\); pass --text-field"):
        prepare_corpus(
            [write_format(tmp_path / "c.parquet", docs, "parquet")],
            tmp_path / "t2",
            tok,
            options=Options(text_field="body"),
        )


def test_hf_datasets_stream_through_datasets_from_local_files(tmp_path, tok):
    train, test = documents(8, seed=1), documents(5, seed=2)
    write_format(tmp_path / "ds" / "train.jsonl", train, "jsonl", field="content")
    write_format(tmp_path / "ds" / "test.jsonl", test, "jsonl", field="content")
    name = f"hf:{tmp_path / 'ds'}"
    corpus = prepare_corpus(
        [name], tmp_path / "tokens", tok, options=Options(text_field="content", split="test")
    )
    assert tokens(corpus) == each_document(tok, test)
    assert manifest(tmp_path / "tokens")["sources"] == [
        {"hf": str(tmp_path / "ds"), "config": None, "split": "test", "text_field": "content"}
    ]
    with pytest.raises(DataError, match=r"no field 'text' \(fields: content, id\)"):
        prepare_corpus([name], tmp_path / "t2", tok)
    with pytest.raises(DataError, match="hf:.*[Ss]plit"):
        prepare_corpus(
            [name], tmp_path / "t3", tok, options=Options(text_field="content", split="validation")
        )
    with pytest.raises(
        DataError, match="hf:nobody/no-such-corpus: cannot be loaded"
    ):  # offline: the hub is unreachable
        prepare_corpus(["hf:nobody/no-such-corpus"], tmp_path / "t4", tok)


def test_hf_instruction_sets_load_like_their_files(tmp_path, tok):
    alpaca = instruction_records()[:6]
    chats = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
        for w in ("yes", "no", "maybe")
    ]
    for name, rows in (("alpaca", alpaca), ("chats", chats)):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "train.jsonl", rows)
        from_hub = load_examples(f"hf:{tmp_path / name}", tok)
        from_file = load_examples(tmp_path / name / "train.jsonl", tok)
        assert [(e.ids, e.learn) for e in from_hub] == [(e.ids, e.learn) for e in from_file]
        assert from_hub[0].where == f"hf:{tmp_path / name}[0]"


def bad_corpus(tmp_path):
    good = documents(3, seed=5)
    lines = [
        json.dumps({"text": good[0]}).encode(),
        b'{"text": "caf\xe9"}',
        b'{"text": "no end',
        b'{"id": 1}',
        b'{"text": 5}',
        b"[1, 2]",
        json.dumps({"text": good[1]}).encode(),
    ]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "d" / "latin1.txt").write_bytes("Café au lait".encode("latin-1"))
    (tmp_path / "d" / "ok.txt").write_text(good[2])
    return tmp_path / "d", good


def test_bad_records_are_counted_named_and_skipped(tmp_path, tok):
    folder, good = bad_corpus(tmp_path)
    logs = []
    corpus = prepare_corpus([folder], tmp_path / "tokens", tok, log=logs.append)
    assert tokens(corpus) == each_document(tok, good)
    bad = manifest(tmp_path / "tokens")["bad_records"]
    assert bad["count"] == 6 and len(bad["examples"]) == 5
    where = [e.split(": ", 1)[0].rsplit("/", 1)[1] for e in bad["examples"]]
    assert where == ["bad.jsonl:2", "bad.jsonl:3", "bad.jsonl:4", "bad.jsonl:5", "bad.jsonl:6"]
    assert "not UTF-8" in bad["examples"][0] and "malformed JSON" in bad["examples"][1]
    assert "no 'text' field" in bad["examples"][2] and "must be a string, got int" in bad["examples"][3]
    assert "expected a JSON object" in bad["examples"][4]
    summary = next(m for m in logs if "skipped 6 bad record(s)" in m)
    assert "bad.jsonl:2: not UTF-8" in summary and "and 1 more" in summary and "--strict" in summary


def test_strict_refuses_the_first_bad_record(tmp_path, tok):
    folder, _ = bad_corpus(tmp_path)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not UTF-8 .*leave out --strict"):
        prepare_corpus([folder], tmp_path / "tokens", tok, options=Options(strict=True))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text"):
        prepare_corpus([folder / "latin1.txt"], tmp_path / "t2", tok, options=Options(strict=True))


def test_damaged_files_are_bad_records_too(tmp_path, tok):
    docs = documents(30)
    packed = gzip.compress(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs))
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    nulls = write_format(tmp_path / "nulls.parquet", [docs[0], None, docs[1]], "parquet")
    corpus = prepare_corpus([tmp_path / "cut.jsonl.gz", nulls], tmp_path / "tokens", tok)
    bad = manifest(tmp_path / "tokens")["bad_records"]["examples"]
    assert "cut.jsonl.gz: damaged gzip stream" in bad[0] and "the rest of the file is skipped" in bad[0]
    assert "nulls.parquet: row 2: no 'text' field" in bad[1]
    assert tokens(corpus)[-len(each_document(tok, docs[:2])) :] == each_document(tok, docs[:2])


def mixed_sources(tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("\n".join(documents(40, seed=9)), encoding="utf-8")  # one document, resumed inside
    return [
        long,
        write_format(tmp_path / "b.jsonl.gz", documents(30, seed=10), "jsonl.gz"),
        write_format(tmp_path / "c.parquet", documents(30, seed=11), "parquet"),
        write_format(tmp_path / "d.json", documents(20, seed=12), "json"),
        f"hf:{write_format(tmp_path / 'hf' / 'train.jsonl', documents(20, seed=13), 'jsonl').parent}",
    ]


@pytest.mark.parametrize("stop_at", [2, 7, 11, 15, 18])  # in each source: text, .gz, Parquet, list, hf:
def test_an_interrupted_tokenisation_resumes_where_it_stopped(
    tmp_path, tok, small_batches, monkeypatch, stop_at
):
    data = mixed_sources(tmp_path)
    whole = tokens(prepare_corpus(data, tmp_path / "whole", tok))
    real = Tokenizer.encode_ordinary_batch_to_numpy
    encoded, limit = [], [stop_at]

    def counting(self, texts, num_threads=8):
        if len(encoded) == limit[0]:
            raise KeyboardInterrupt
        encoded.append(sum(map(len, texts)))
        return real(self, texts, num_threads=num_threads)

    monkeypatch.setattr(Tokenizer, "encode_ordinary_batch_to_numpy", counting)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(data, part, tok)
    assert (part / "progress.json").is_file() and not (part / "manifest.json").exists()
    # What a kill leaves: tokens written after the last recorded batch, and a shard begun after it.
    with open(sorted(part.glob("tokens-*.bin"))[-1], "ab") as fh:
        fh.write(b"\x01\x02" * 50)
    (part / "tokens-00099.bin").write_bytes(b"\x03\x04" * 10)
    done_before = sum(encoded)
    encoded.clear()
    limit[0] = -1
    resumed = prepare_corpus(data, part, tok)
    assert tokens(resumed) == whole
    total = sum(len(t) for t in _all_texts(data, tok))
    assert sum(encoded) == total - done_before  # nothing encoded twice, nothing left out
    assert sorted(p.name for p in part.iterdir()) == ["manifest.json", "tokens-00000.bin"]


def _all_texts(data, tok):
    """Every piece the sources yield, as the tokeniser sees them."""
    return [t for b in feed.batches(sources.open_sources(data), None, sources.BadRecords()) for t in b.texts]


def test_a_change_of_sources_tokenises_anew(tmp_path, tok):
    a = write_format(tmp_path / "a.jsonl", documents(4), "jsonl")
    prepare_corpus([a], tmp_path / "tokens", tok)
    b = write_format(tmp_path / "b.jsonl", documents(3, seed=3), "jsonl")
    assert tokens(prepare_corpus([b], tmp_path / "tokens", tok)) == each_document(tok, documents(3, seed=3))
    assert corpus_module.MANIFEST_VERSION == manifest(tmp_path / "tokens")["version"]


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet"])
def test_a_tiny_model_learns_from_a_compressed_or_parquet_corpus(tmp_path, capsys, fmt):
    docs = documents(60, seed=4)
    if fmt == "jsonl.gz":  # with one bad record, which the run names and skips
        lines = [json.dumps({"text": d}) for d in docs]
        lines.insert(3, json.dumps({"txt": "misspelt field"}))
        (tmp_path / "corpus.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
        data = tmp_path / "corpus.jsonl.gz"
    else:
        data = write_format(tmp_path / "corpus.parquet", docs, "parquet", row_group=16)
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, *pretrain_argv(data, out, "--max-steps", "20", "--lr", "1e-2", "--warmup-steps", "3")
    )
    assert code == 0, err
    rows = metrics(out)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 4.0  # from ~10.8 (uniform over 50,257) to ~4.5
    assert "tokenised 60 documents" in err
    if fmt == "jsonl.gz":
        assert "skipped 1 bad record(s): " in err and "corpus.jsonl.gz:4: no 'text' field" in err
        code, _, err = run_cli(
            capsys, *pretrain_argv(data, tmp_path / "strict", "--max-steps", "1", "--strict")
        )
        assert code == 1 and "Traceback" not in err
        assert (
            err.strip().splitlines()[-1].startswith("error: ") and "corpus.jsonl.gz:4: no 'text' field" in err
        )


PEAK_RSS = """
import sys
from pathlib import Path
from gpt2tui.tokenizer import Tokenizer
from gpt2tui.training.corpus import prepare_corpus
corpus = prepare_corpus([sys.argv[1]], Path(sys.argv[2]), Tokenizer(), num_threads=2)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(peak.split()[1]) // 1024, corpus.manifest["tokens"])
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc (Linux)")
@pytest.mark.parametrize("fmt", ["txt", "jsonl.gz", "parquet"])  # .zst and .json read like .gz
def test_tokenising_memory_stays_flat_as_the_corpus_grows(tmp_path, fmt):
    """Peak RSS of a fresh process tokenising a ~10 MB and a ~40 MB corpus: a reader that held its file, or a
    tokeniser that held the corpus's text or tokens, would grow by 30 MB or more; streaming stays within the
    allocators' noise (pyarrow's mimalloc moves by ~15 MB run to run)."""
    pool = documents(300, seed=7, words=(100, 400))
    peaks, counts = [], []
    for megabytes in (10, 40):
        path = write_format(
            tmp_path / f"{megabytes}" / f"corpus.{fmt}", sized(pool, megabytes), fmt, row_group=256
        )
        run = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(path), str(tmp_path / f"tokens{megabytes}")],
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=tmp_path,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        peak, count = map(int, run.stdout.split())
        peaks.append(peak)
        counts.append(count)
    assert counts[1] > 3.5 * counts[0]  # the larger corpus really is four times the tokens
    assert peaks[1] - peaks[0] < 20, f"peak RSS {peaks[0]} MB for 10 MB of {fmt}, {peaks[1]} MB for 40 MB"
