"""Real processes: damaged chat databases under the plain chat, and a sample of the broken model folders under
`gpt2tui info`. What a process prints, its exit status and the files it leaves are what a user sees."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from gpt2tui.store import ChatStore
from gpt2tui_testkit.badinput import (
    BROKEN_JSON,
    INDEXES,
    WEIGHTS,
    assert_one_line_error,
    copy_of,
    set_field,
    sharded,
    snapshot,
)

TIMEOUT = 120  # a hang guard, not a speed assertion


def _gpt2tui(*argv, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2tui.cli", *map(str, argv)], input=stdin, capture_output=True,
                          text=True, timeout=TIMEOUT, env={**os.environ, **(env or {})})


def _chats_db(data_home):
    return data_home / "gpt2tui" / "chats.db"


def _a_database(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with ChatStore(path) as store:
        c = store.create(title="Earlier")
        store.append_message(c.id, "user", "Do you remember?")
        store.append_message(c.id, "assistant", "Yes.", "eos")


def _titles(path) -> set[str]:
    """The conversation titles an SQLite file holds, read-only; none where it is not one."""
    if not path.is_file():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return {row[0] for row in db.execute("SELECT title FROM conversations")}
    except sqlite3.Error:
        return set()


def _bytes(path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _sql(path, *statements):
    with sqlite3.connect(path) as db:
        for sql in statements:
            db.execute(sql)


DATABASES = {
    "garbage": lambda p: p.write_bytes(b"this is not a database" * 100),
    "empty file": lambda p: p.write_bytes(b""),
    "truncated": lambda p: (_a_database(p), _sql(p, "PRAGMA wal_checkpoint(TRUNCATE)"),
                            p.write_bytes(p.read_bytes()[:1500])),
    "settings not an object": lambda p: (_a_database(p), _sql(p, "UPDATE conversations SET settings = '[1, 2]'")),
    "settings not json": lambda p: (_a_database(p), _sql(p, "UPDATE conversations SET settings = '{oops'")),
    "a table missing": lambda p: (_a_database(p), _sql(p, "DROP TABLE messages")),
    "a newer schema": lambda p: (_a_database(p), _sql(p, "PRAGMA user_version = 99")),
    "a folder in its place": lambda p: p.mkdir(parents=True),
}


@pytest.mark.parametrize("name", DATABASES)
def test_the_plain_chat_with_a_damaged_database(tmp_path, tiny_text_model, name):
    """The chat goes on, says in one line what happened to the history, and no byte of the old file is lost: it is
    where it was, or moved aside beside it."""
    data_home = tmp_path / "xdg"
    path = _chats_db(data_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    DATABASES[name](path)
    before_titles, before_bytes = _titles(path), _bytes(path)
    run = _gpt2tui("chat", "--plain", "--model", tiny_text_model, "-n", "3", stdin="Hello\n",
                   env={"XDG_DATA_HOME": str(data_home), "COLUMNS": "300"})
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.strip(), run.stderr  # the reply
    notes = [line for line in run.stderr.splitlines() if line.startswith(("warning:", "error:"))]
    assert len(notes) <= 1, run.stderr
    # Nothing lost: the conversations that could be read are readable still (in the database, or in the copy moved
    # aside), and a file that could not be read is still there byte for byte, in its place or beside it.
    after_titles = set().union(*(_titles(f) for f in path.parent.iterdir() if f.name.startswith("chats.db")))
    assert before_titles <= after_titles
    if before_bytes is not None and not before_titles:
        assert before_bytes in {_bytes(f) for f in path.parent.iterdir()}


SAMPLE = {**{f"json: {n}": n for n in list(BROKEN_JSON)[:4]}, **{f"weights: {n}": n for n in list(WEIGHTS)[:5]},
          **{f"index: {n}": n for n in list(INDEXES)[:3]}}


@pytest.mark.parametrize("case", SAMPLE)
def test_info_on_a_broken_model_folder(tmp_path, tiny_ours, case):
    kind, name = case.split(": ", 1)
    folder = copy_of(tiny_ours, tmp_path)
    if kind == "json":
        (folder / "config.json").write_bytes(BROKEN_JSON[name])
    elif kind == "weights":
        WEIGHTS[name](folder)
    else:
        sharded(folder, INDEXES[name])
    before = snapshot(folder)
    run = _gpt2tui("info", "--model", folder, env={"COLUMNS": "300"})
    assert_one_line_error(run.returncode, run.stderr)
    assert snapshot(folder) == before


@pytest.mark.parametrize("field, value", [("n_layers", 10**6), ("emb_dim", 10**12), ("vocab_size", 10**9)])
def test_absurd_sizes_are_refused_at_once(tmp_path, tiny_ours, field, value):
    folder = copy_of(tiny_ours, tmp_path)
    set_field(folder, field, value)
    for command in (("info",), ("generate", "Hi", "-n", "1")):
        run = _gpt2tui(*command, "--model", folder, env={"COLUMNS": "300"})
        assert_one_line_error(run.returncode, run.stderr, words=(field,))
