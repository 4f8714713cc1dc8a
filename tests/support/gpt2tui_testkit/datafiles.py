"""Pretraining corpora in every format `--data` reads, written by the tests themselves (no downloads)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

WORDS = (
    "the keeper counted ships every evening seven sailed north and three came back his daughter painted rocks "
    "blue so sailors would remember harbour when fog rolled in rang brass bell twelve times waited for answer "
    "lantern tide gull anchor rope salt storm island beacon"
).split()


def documents(n: int, seed: int = 0, words: tuple[int, int] = (20, 80)) -> list[str]:
    """`n` short documents of seeded random words, with sentences and the odd paragraph break."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
        docs.append(body.capitalize().replace(" and ", ". And ").replace(" so ", ",\nso ") + ".")
    return docs


def sized(pool: list[str], megabytes: float, seed: int = 0) -> list[str]:
    """Documents drawn from `pool` until they hold about `megabytes` MB of text: a big corpus, made quickly."""
    rng, docs, size = random.Random(seed), [], 0
    while size < megabytes * 1e6:
        docs.append(rng.choice(pool))
        size += len(docs[-1]) + 1
    return docs


def jsonl_bytes(docs, field: str = "text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode("utf-8")


def write_format(path: Path, docs: list[str], fmt: str, field: str = "text", row_group: int = 7) -> Path:
    """`docs` as a file of format `fmt`: txt (joined, one document), jsonl, json (a list), jsonl.gz, jsonl.zst,
    parquet (row groups of `row_group` rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        path.write_text("\n\n".join(docs), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_bytes(jsonl_bytes(docs, field))
    elif fmt == "json":
        path.write_text(json.dumps([{field: d} for d in docs], indent=1), encoding="utf-8")
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(jsonl_bytes(docs, field), compresslevel=1))
    elif fmt == "jsonl.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(docs, field)))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path, row_group_size=row_group)
    else:
        raise ValueError(fmt)
    return path
