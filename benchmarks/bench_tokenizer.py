"""Encoding throughput (MB/s of UTF-8) of our C++ BPE encoder against tiktoken, on the same texts, in one run.

The groups, each with the fast path beside its baseline:

- ``tokenizer-encode-mixed``: one ~2 MB string (the generated test corpus, tests/support/gpt2tui_testkit/corpus.py,
  three seeds, plus "The Verdict" when ../shared/data has it), single-threaded `encode`;
- ``tokenizer-encode-batch``: the same documents as a list, `encode_batch` with `num_threads=os.cpu_count()`;
- ``tokenizer-encode-prose``: English prose alone, "The Verdict" repeated to 1 MB (when ../shared/data has it),
  single-threaded: the reference the issue names for the pathological inputs' time per byte. A best case: the
  story is 20 KB, so from its second copy on every word is in the piece cache;
- ``tokenizer-encode-english-docs``: English that does not repeat, Python's own reference documentation as CPython
  ships it (``pydoc_data.topics``, ~0.5 MB), single-threaded: the same reference without the loop;
- ``tokenizer-encode-numpy``: the mixed text to a numpy uint32 array: `encode_to_numpy` (ours, then tiktoken's), and
  ours through a list and `numpy.asarray` (how training data was made before `encode_ordinary_batch_to_numpy`);
- ``tokenizer-decode``: the mixed text's ids back to text (`decode`), MB/s of the text;
- ``tokenizer-pathological-*``: 1 MB worst cases (one letter repeated, random letters, random digits, base64, random
  Cyrillic). Where one tiktoken call on 1 MB would take more than ~30 s, tiktoken is measured on a shorter input
  and ``extra_info["n_bytes"]`` says so.

The baseline is tiktoken's `Encoding` built from the package's own vocabulary (`_tiktoken_encoding`), called
directly, so it pays no policy-layer overhead; `Tokenizer(backend="cpp")` is called through the public API. Both apply
the same special-token check. `test_cpp_equals_tiktoken_on_benchmark_texts` asserts that the two produce the same ids
on every text measured here.

    make bench            # or: .venv/bin/python -m pytest benchmarks/bench_tokenizer.py --benchmark-only
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest

from gpt2tui import Tokenizer
from gpt2tui.tokenizer import _tiktoken_encoding
from gpt2tui_testkit.corpus import (  # tests/support, on pytest's path (pyproject.toml)
    build_corpus,
    pathological,
)

REPO = Path(__file__).resolve().parents[1]

FAST = "cpp"
ENGINES = [FAST, "tiktoken"]
PATHOLOGICAL_BYTES = 1_000_000
PATHOLOGICAL_NAMES = list(pathological(8))
TIKTOKEN_BUDGET_S = 30.0  # the longest one tiktoken call on a pathological input may be expected to take
NUM_THREADS = os.cpu_count() or 1
VERDICT = [REPO.parent / "shared" / "data" / "the-verdict.txt", Path("/work/shared/data/the-verdict.txt")]


def _verdict() -> list[str]:
    for path in VERDICT:
        if path.is_file():
            return [p for p in path.read_text(encoding="utf-8").split("\n\n") if p]
    return []


@functools.cache
def _prose() -> str:
    """About 1 MB of English prose (one short story, repeated), or "" without the story."""
    story = "\n\n".join(_verdict())
    if not story:
        return ""
    return "\n\n".join([story] * (PATHOLOGICAL_BYTES // len(story.encode("utf-8")) + 1))


@functools.cache
def _english_docs() -> str:
    """The topics of Python's reference documentation, as `help()` shows them, or "" where CPython lacks them."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return ""
    return "\n\n".join(topics[name] for name in sorted(topics))


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """~2 MB of varied documents."""
    docs = []
    for seed in range(3):
        docs += build_corpus(seed=seed)
    return docs + _verdict()


@pytest.fixture(scope="module")
def mixed_text(documents) -> str:
    return "\n\n".join(documents)


@functools.cache
def _engines():
    return {FAST: Tokenizer(backend=FAST), "tiktoken": _tiktoken_encoding()}


@functools.cache
def _pathological(n_bytes: int) -> dict[str, str]:
    return pathological(n_bytes)


@functools.cache
def _tiktoken_size(name: str) -> int:
    """The largest of 64 KB, 256 KB and 1 MB on which one tiktoken call of `name` is expected to stay within budget.

    Each probe is timed once; the next size is tried only if even quadratic growth from there would fit."""
    enc = _tiktoken_encoding()
    size = PATHOLOGICAL_BYTES // 16
    while size < PATHOLOGICAL_BYTES:
        start = time.perf_counter()
        enc.encode(_pathological(size)[name])
        elapsed = time.perf_counter() - start
        if elapsed * 16 > TIKTOKEN_BUDGET_S:
            return size
        size *= 4
    return PATHOLOGICAL_BYTES


def _report(benchmark, n_bytes: int, **info):
    benchmark.extra_info["n_bytes"] = n_bytes
    if benchmark.stats is None:  # --benchmark-disable: each body ran once, untimed
        return
    benchmark.extra_info["MB_per_s"] = round(n_bytes / benchmark.stats.stats.median / 1e6, 2)
    benchmark.extra_info.update(info)


def _utf8_len(texts) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def _bench_one_text(benchmark, engine: str, text: str) -> None:
    """Single-threaded `encode` of one large string."""
    enc = _engines()[engine]
    ids = benchmark.pedantic(enc.encode, args=(text,), rounds=5, warmup_rounds=1)
    assert len(ids) > 100_000
    _report(benchmark, _utf8_len([text]), n_tokens=len(ids), threads=1)


@pytest.mark.benchmark(group="tokenizer-encode-mixed")
@pytest.mark.parametrize("engine", ENGINES)
def test_encode_mixed(benchmark, engine, mixed_text):
    _bench_one_text(benchmark, engine, mixed_text)


@pytest.mark.benchmark(group="tokenizer-encode-prose")
@pytest.mark.parametrize("engine", ENGINES)
def test_encode_prose(benchmark, engine):
    if not _prose():
        pytest.skip("the-verdict.txt is not in ../shared/data")
    _bench_one_text(benchmark, engine, _prose())


@pytest.mark.benchmark(group="tokenizer-encode-english-docs")
@pytest.mark.parametrize("engine", ENGINES)
def test_encode_english_docs(benchmark, engine):
    if not _english_docs():
        pytest.skip("this Python has no pydoc_data.topics")
    _bench_one_text(benchmark, engine, _english_docs())


@pytest.mark.benchmark(group="tokenizer-encode-numpy")
@pytest.mark.parametrize("path", ["cpp", "tiktoken", "cpp-list-asarray"])
def test_encode_to_numpy(benchmark, path, mixed_text):
    import numpy as np

    engine = _engines()[FAST if path.startswith(FAST) else path]
    if path == "cpp-list-asarray":
        def run():
            return np.asarray(engine.encode(mixed_text), dtype=np.uint32)
    else:
        def run():
            return engine.encode_to_numpy(mixed_text)
    ids = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert ids.dtype == np.uint32 and len(ids) > 100_000
    _report(benchmark, _utf8_len([mixed_text]), n_tokens=len(ids), threads=1)


@pytest.mark.benchmark(group="tokenizer-decode")
@pytest.mark.parametrize("engine", ENGINES)
def test_decode(benchmark, engine, mixed_text):
    enc = _engines()[engine]
    ids = enc.encode(mixed_text)
    text = benchmark.pedantic(enc.decode, args=(ids,), rounds=5, warmup_rounds=1)
    assert text == mixed_text
    _report(benchmark, _utf8_len([mixed_text]), n_tokens=len(ids), threads=1)


@pytest.mark.benchmark(group="tokenizer-encode-batch")
@pytest.mark.parametrize("engine", ENGINES)
def test_encode_batch(benchmark, engine, documents):
    enc = _engines()[engine]
    out = benchmark.pedantic(lambda: enc.encode_batch(documents, num_threads=NUM_THREADS), rounds=5, warmup_rounds=1)
    assert len(out) == len(documents)
    _report(benchmark, _utf8_len(documents), n_documents=len(documents), threads=NUM_THREADS)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.benchmark(group=f"tokenizer-pathological-{n}"))
                                  for n in PATHOLOGICAL_NAMES])
def test_encode_pathological(benchmark, engine, name):
    size = PATHOLOGICAL_BYTES if engine == FAST else _tiktoken_size(name)
    text = _pathological(size)[name]
    enc = _engines()[engine]
    ids = benchmark.pedantic(enc.encode, args=(text,), rounds=3, warmup_rounds=1)
    assert ids
    note = {} if size == PATHOLOGICAL_BYTES else {
        "note": f"measured on {size} bytes, not {PATHOLOGICAL_BYTES}: one call on the full size would exceed "
                f"~{TIKTOKEN_BUDGET_S:.0f} s"}
    _report(benchmark, _utf8_len([text]), n_tokens=len(ids), **note)


def test_cpp_equals_tiktoken_on_benchmark_texts(documents, mixed_text):
    """The figures compare like with like: both engines give the same ids on every text measured above."""
    fast, tk = _engines()[FAST], _engines()["tiktoken"]
    assert fast.encode(mixed_text) == tk.encode(mixed_text)
    assert fast.encode(_prose()) == tk.encode(_prose())
    assert fast.encode(_english_docs()) == tk.encode(_english_docs())
    assert (fast.encode_to_numpy(mixed_text) == tk.encode_to_numpy(mixed_text)).all()
    assert fast.encode_batch(documents, num_threads=NUM_THREADS) == tk.encode_batch(documents, num_threads=NUM_THREADS)
    for name in PATHOLOGICAL_NAMES:
        text = _pathological(_tiktoken_size(name))[name]
        assert fast.encode(text) == tk.encode(text), name
