"""The conversations database: CRUD, ordering, search, Markdown export, durability, and recovery from a bad file."""

import os
import sqlite3
import subprocess
import sys
import threading
import warnings
from datetime import datetime

import pytest

from gpt2tui import store as store_module
from gpt2tui.store import (
    SCHEMA_VERSION,
    ChatStore,
    ConversationInUseError,
    ConversationNotFoundError,
    DatabaseMovedWarning,
    ExportFolderMissingError,
    StoreError,
    StoreWriteError,
    default_path,
)


@pytest.fixture
def store():
    with ChatStore() as s:
        yield s


def _count(path, table):
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_the_database_lives_under_xdg_data_home_in_wal_mode(store, isolated_home, monkeypatch):
    assert store.path == isolated_home / "xdg" / "gpt2tui" / "chats.db" == default_path()
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    monkeypatch.setenv("XDG_DATA_HOME", str(isolated_home / "elsewhere"))  # read at call time
    assert default_path() == isolated_home / "elsewhere" / "gpt2tui" / "chats.db"


def test_create_get_rename_delete(store):
    c = store.create(model="gpt2", settings={"temperature": 0.5})
    assert (c.title, c.model, c.settings) == ("New chat", "gpt2", {"temperature": 0.5})
    store.append_message(c.id, "user", "Hi")
    m = store.append_message(c.id, "assistant", "Hello", "eos")
    assert (m.position, m.role, m.finish_reason) == (1, "assistant", "eos")
    store.rename(c.id, "Greetings")
    store.save_settings(c.id, {"temperature": 0.9, "system_prompt": "Be kind."})
    got = store.get(c.id)
    assert got.title == "Greetings" and got.settings == {"temperature": 0.9, "system_prompt": "Be kind."}
    assert [(m.position, m.role, m.content, m.finish_reason) for m in got.messages] == [
        (0, "user", "Hi", None), (1, "assistant", "Hello", "eos"),
    ]
    assert [m.to_chat() for m in got.messages] == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "finish_reason": "eos"},
    ]
    assert store.delete_last_message(c.id).content == "Hello"
    assert [m.content for m in store.get(c.id).messages] == ["Hi"]
    store.delete(c.id)
    assert _count(store.path, "messages") == 0  # cascaded
    for call in (store.get, store.delete, lambda i: store.rename(i, "x"), lambda i: store.update_last_message(i, "x")):
        with pytest.raises(ConversationNotFoundError):
            call(c.id)
    with pytest.raises(ValueError, match="role"):
        store.append_message(store.create().id, "robot", "beep")


def test_conversations_are_listed_most_recently_updated_first(store):
    a, b, c = (store.create(title=t) for t in "abc")
    assert [x.title for x in store.conversations()] == ["c", "b", "a"]
    store.append_message(a.id, "user", "bump")
    assert [x.title for x in store.conversations()] == ["a", "c", "b"]
    store.rename(b.id, "B")
    assert [x.title for x in store.conversations()] == ["B", "a", "c"]
    store.update_last_message(a.id, "bumped")
    assert [x.title for x in store.conversations(limit=2)] == ["a", "B"]


def test_search_is_case_insensitive_and_matches_percent_and_underscore_literally(store):
    ids = {}
    for title, text in [
        ("Discount", "prices are 100% off"), ("Snake", "use snake_case names"), ("Plain", "a 100 x off"),
        ("Greeting", "HeLLo World"), ("German", "ÄPFEL und Birnen"), ("Path", r"C:\temp\file"),
        ("Hundred%", "no match in text"),
    ]:
        c = store.create(title=title)
        store.append_message(c.id, "user", text)
        ids[title] = c.id

    def titles(q):
        return sorted(x.title for x in store.search(q))

    assert titles("%") == ["Discount", "Hundred%"]
    assert titles("100%") == ["Discount"]  # not "a 100 x off"
    assert titles("_") == ["Snake"]
    assert titles("e_c") == ["Snake"]
    assert titles("hello") == ["Greeting"]
    assert titles("äpfel") == ["German"]
    assert titles("\\temp") == ["Path"]
    assert titles("snake") == ["Snake"]  # the title matches too
    assert titles("nowhere") == []
    assert len(store.search("  ")) == len(ids)


def test_export_markdown(store, tmp_path):
    c = store.create(title="Colours", model="my-bot", settings={"system_prompt": "Be brief."})
    store.append_message(c.id, "user", "Name a colour.")
    store.append_message(c.id, "assistant", "Blue.", "eos")
    store.append_message(c.id, "user", "Another?")
    store.append_message(c.id, "assistant", "Gre", "cancelled")
    when = datetime.fromtimestamp(store.get(c.id).created).strftime("%Y-%m-%d %H:%M")
    text = store.export_markdown(c.id)
    assert text == (
        f"# Colours\n\n*my-bot · started {when}*\n\n**System prompt:** Be brief.\n\n"
        "## User\n\nName a colour.\n\n## Assistant\n\nBlue.\n\n"
        "## User\n\nAnother?\n\n## Assistant\n\nGre\n\n*[stopped]*\n"
    )
    out = store.export_markdown_file(c.id, tmp_path / "out" / "colours.md", create_folder=True)
    assert out.read_text(encoding="utf-8") == text
    assert [p.name for p in out.parent.iterdir()] == ["colours.md"]  # no temporary file left
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # like any new file, not mkstemp's 0600
    with pytest.raises(StoreError, match="already exists"):  # an export never replaces a file
        store.export_markdown_file(c.id, out)
    assert out.read_text(encoding="utf-8") == text
    assert store_module.free_name(out) == out.with_name("colours-2.md")
    assert store_module.free_name(tmp_path / "new.md") == tmp_path / "new.md"


def test_export_into_a_folder_a_missing_folder_and_a_nul_byte(store, tmp_path):
    c = store.create(title="Colours")
    store.append_message(c.id, "user", "Name a colour.")
    (tmp_path / "notes").mkdir()
    for where in (tmp_path / "notes", f"{tmp_path / 'notes'}{os.sep}"):  # a folder: the default name inside it
        written = store.export_markdown_file(c.id, where, default_name="colours.md")
        assert written.parent == tmp_path / "notes" and written.read_text().startswith("# Colours")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["colours-2.md", "colours.md"]
    missing = tmp_path / "new" / "deeper" / "c.md"
    with pytest.raises(ExportFolderMissingError) as e:  # named, and not made until the user says so
        store.export_markdown_file(c.id, missing)
    assert e.value.folder == missing.parent and str(missing.parent) in str(e.value) and not (tmp_path / "new").exists()
    assert store.export_markdown_file(c.id, missing, create_folder=True).read_text().startswith("# Colours")
    with pytest.raises(StoreError, match="NUL byte"):
        store.export_markdown_file(c.id, tmp_path / "a\x00b.md")
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        store.export_markdown_file(c.id, tmp_path / "afile" / "c.md")


def test_two_exports_to_one_new_path_never_overwrite_each_other(store, tmp_path):
    """Both find the path free, then both write: exactly one wins, and its file is whole."""
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    a, b = store.create(title="Apples"), store.create(title="Pears")
    for round_ in range(20):
        target = tmp_path / f"same-{round_}.md"
        barrier = threading.Barrier(2)
        outcome: dict[int, str] = {}

        def export(conversation_id, target=target, barrier=barrier, outcome=outcome):
            barrier.wait()
            try:
                store.export_markdown_file(conversation_id, target)
                outcome[conversation_id] = "written"
            except StoreError as e:
                outcome[conversation_id] = str(e)

        threads = [threading.Thread(target=export, args=(cid,)) for cid in (a.id, b.id)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (winner,) = [cid for cid, result in outcome.items() if result == "written"]
        (loser,) = [result for result in outcome.values() if result != "written"]
        assert "already exists" in loser
        assert target.read_text().startswith(f"# {'Apples' if winner == a.id else 'Pears'}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"same-{i}.md" for i in range(20))


def test_an_export_that_loses_the_race_after_writing_leaves_the_winner_s_file(store, tmp_path, monkeypatch):
    c = store.create(title="Mine")
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    target = tmp_path / "x.md"
    real_link = os.link

    def someone_else_first(src, dst):
        with open(dst, "w") as f:
            f.write("theirs")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", someone_else_first)
    with pytest.raises(StoreError, match="already exists"):
        store.export_markdown_file(c.id, target)
    assert target.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["x.md"]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_reopening_keeps_everything(isolated_home):
    with ChatStore() as s:
        c = s.create(title="Keep me", settings={"seed": 1})
        s.append_message(c.id, "user", "Remember this")
    with ChatStore() as s:
        (got,) = s.conversations()
        assert got.title == "Keep me" and got.settings == {"seed": 1}
        assert [m.content for m in s.get(got.id).messages] == ["Remember this"]


def test_a_streamed_reply_survives_a_killed_process(isolated_home):
    # The process writes a reply in pieces and dies without closing anything: what was written is there.
    script = (
        "import os\n"
        "from gpt2tui.store import ChatStore\n"
        "s = ChatStore()\n"
        "c = s.create(title='Killed')\n"
        "s.append_message(c.id, 'user', 'Tell me a story')\n"
        "s.append_message(c.id, 'assistant', '')\n"
        "s.update_last_message(c.id, 'Once upon')\n"
        "s.update_last_message(c.id, 'Once upon a time')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with ChatStore() as s:
        (c,) = s.conversations()
        assert [(m.role, m.content, m.finish_reason) for m in s.get(c.id).messages] == [
            ("user", "Tell me a story", None), ("assistant", "Once upon a time", None),
        ]


def test_a_garbage_file_is_moved_aside_and_a_new_database_made(isolated_home):
    path = default_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database\n" * 100)
    with pytest.warns(DatabaseMovedWarning) as caught:
        s = ChatStore()
    message = str(caught[0].message)
    assert "\n" not in message
    moved = [p for p in path.parent.iterdir() if p.name.startswith("chats.db.corrupt-")]
    assert len(moved) == 1 and f"moved it to {moved[0]}" in message
    assert moved[0].read_bytes() == b"this is not a database\n" * 100  # kept, not deleted
    with s:
        c = s.create(title="Fresh")
        assert [x.title for x in s.conversations()] == ["Fresh"] and c.id == 1


def _moved_files(folder):
    return [p.name for p in folder.iterdir() if ".corrupt-" in p.name]


def test_a_database_another_process_writes_to_is_never_moved_aside(isolated_home):
    with ChatStore() as s:
        s.create(title="Old")
    holder = sqlite3.connect(default_path(), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # someone holds the write lock (another gpt2tui, a backup tool)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s = ChatStore(timeout=0.1)
        with s:
            assert [c.title for c in s.conversations()] == ["Old"]  # the history is there
            with pytest.raises(StoreWriteError, match="in use by another process") as e:
                s.create(title="New")
            assert e.value.kind == "busy"
            holder.execute("ROLLBACK")
            s.create(title="New")  # once it is free, writes go through
            assert [c.title for c in s.conversations()] == ["New", "Old"]
    finally:
        holder.close()
    assert _moved_files(default_path().parent) == []


def test_a_database_held_while_opening_is_opened_read_only_then_written_once_free(isolated_home):
    with ChatStore() as s:
        s.create(title="Old")
    with sqlite3.connect(default_path(), isolation_level=None) as db:  # a journal other than WAL: switching needs
        db.execute("PRAGMA journal_mode=DELETE")                       # a lock the holder has
    holder = sqlite3.connect(default_path(), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        s = ChatStore(timeout=0.1)
        with s:
            assert s.read_only and "in use by another process" in s.read_only
            assert [c.title for c in s.conversations()] == ["Old"]
            with pytest.raises(StoreWriteError) as e:
                s.create(title="New")
            assert e.value.kind == "busy"
            holder.execute("ROLLBACK")
            s.create(title="New")
            assert s.read_only is None and {c.title for c in s.conversations()} == {"New", "Old"}
    finally:
        holder.close()
    assert _moved_files(default_path().parent) == []


def test_a_database_locked_exclusively_says_so_and_is_left_alone(isolated_home):
    with ChatStore() as s:
        s.create(title="Old")
    holder = sqlite3.connect(default_path(), isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE conversations SET title = title")
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            ChatStore(timeout=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _moved_files(default_path().parent) == [] and _count(default_path(), "conversations") == 1


_FIRST_START = """
import sys, time
from gpt2tui.store import ChatStore
until = float(sys.argv[2])
while time.time() < until:
    pass
with ChatStore(sys.argv[1]) as s:
    s.create(title=sys.argv[3])
"""


def test_two_first_starts_make_one_database_and_move_nothing(tmp_path):
    import time

    for i in range(8):
        path = tmp_path / f"race-{i}" / "chats.db"
        path.parent.mkdir()
        start = time.time() + 0.6  # both processes open the missing database at the same moment (after starting)
        runs = [subprocess.Popen([sys.executable, "-c", _FIRST_START, str(path), str(start), name],
                                 stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
        for run in runs:
            assert run.wait(timeout=120) == 0, run.stderr.read()
        assert _moved_files(path.parent) == [] and sorted(p.name for p in path.parent.iterdir()
                                                          if not p.name.endswith(("-wal", "-shm", ".locks"))) == [
            "chats.db"]
        with sqlite3.connect(path) as db:
            assert sorted(r[0] for r in db.execute("SELECT title FROM conversations")) == ["a", "b"]


def test_a_full_disk_rolls_the_write_back_and_the_conversation_catches_up(store):
    c = store.create(title="Disk")
    store.append_message(c.id, "user", "Hello")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "the disk is full"
    with pytest.raises(StoreWriteError, match="disk full: .* your reply is kept until you free space") as e:
        store.append_message(c.id, "assistant", "x" * 200_000)
    assert e.value.kind == "full"
    assert [m.content for m in store.get(c.id).messages] == ["Hello"]  # rolled back whole
    store._db.execute("PRAGMA max_page_count=1073741823")  # space again
    messages = [{"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "x" * 200_000, "finish_reason": "max_tokens"}]
    assert store.save_conversation(c.id, "Disk", "m", {}, messages) == c.id
    assert [m.to_chat() for m in store.get(c.id).messages] == messages


def test_save_conversation_makes_the_database_equal_to_the_conversation_in_memory(store):
    messages = [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two", "finish_reason": "eos"}]
    new = store.save_conversation(None, "Fresh", "m", {"temperature": 0.5}, messages)
    got = store.get(new)
    assert got.title == "Fresh" and got.settings == {"temperature": 0.5}
    assert [m.to_chat() for m in got.messages] == messages
    first_id = got.messages[0].id
    changed = [messages[0], {"role": "assistant", "content": "Other", "finish_reason": "cancelled"},
               {"role": "user", "content": "Three"}]
    assert store.save_conversation(new, "Fresh", "m", {}, changed) == new
    got = store.get(new)
    assert [m.to_chat() for m in got.messages] == changed and got.messages[0].id == first_id  # kept, not rewritten
    store.delete(new)
    again = store.save_conversation(new, "Fresh", "m", {}, changed)  # gone meanwhile: made anew
    assert [m.to_chat() for m in store.get(again).messages] == changed and len(store.conversations()) == 1


def test_a_newer_schema_is_refused_and_left_alone(isolated_home):
    with ChatStore() as s:
        s.create(title="From the future")
    with sqlite3.connect(default_path()) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(StoreError, match="newer gpt2tui"):
            ChatStore()
    assert _count(default_path(), "conversations") == 1


def test_migrations_run_in_order_on_open(isolated_home, monkeypatch):
    with ChatStore() as s:
        s.create(title="v1")

    def add_pinned(db):
        db.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, add_pinned])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with ChatStore() as s:
        assert [c.title for c in s.conversations()] == ["v1"]
    with sqlite3.connect(default_path()) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert db.execute("SELECT pinned FROM conversations").fetchall() == [(0,)]


def test_one_store_is_shared_by_threads(store):
    c = store.create()

    def write(tag):
        for i in range(25):
            store.append_message(c.id, "user", f"{tag}{i}")
            store.update_last_message(c.id, f"{tag}{i}!")

    threads = [threading.Thread(target=write, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    messages = store.get(c.id).messages
    assert [m.position for m in messages] == list(range(100))
    assert sum(m.content.endswith("!") for m in messages) >= 25  # the last of each burst was updated


def test_a_conversation_is_written_by_one_store_at_a_time(isolated_home):
    with ChatStore() as first, ChatStore() as second:
        c = first.create(title="Mine")
        first.append_message(c.id, "user", "Hello")
        assert not second.claim(c.id)  # the first holds it (a flock: per store, even in one process)
        with pytest.raises(ConversationInUseError, match="open in another gpt2tui"):
            second.append_message(c.id, "assistant", "overwritten?")
        with pytest.raises(ConversationInUseError):
            second.delete(c.id)
        assert [m.content for m in second.get(c.id).messages] == ["Hello"]  # reading is fine
        # Catching up on a conversation another store writes keeps it whole, as a conversation of its own.
        copy = second.save_conversation(c.id, "Mine", "m", {}, [{"role": "user", "content": "Hello"},
                                                                 {"role": "user", "content": "Mine too"}])
        assert copy != c.id and second.get(copy).title == "Mine (continued)"
        first.release(c.id)
        assert second.claim(c.id)
        second.append_message(c.id, "assistant", "Now mine")
        assert not first.claim(c.id)
    with ChatStore() as third:  # closing released everything
        assert third.claim(c.id)


_PLAIN_CHAT = [sys.executable, "-m", "gpt2tui.cli", "chat", "--plain", "-n", "4", "-t", "0", "-m"]


def test_two_processes_on_one_conversation_lose_no_reply(isolated_home, hf_small_dir):
    """The second process opens the conversation the first is writing: read-only, said so, and its message refused
    with a reason; every reply the first printed is in the database."""
    import time

    env = {**os.environ, "COLUMNS": "200"}
    first = subprocess.Popen([*_PLAIN_CHAT, str(hf_small_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        first.stdin.write("First from A\n")
        first.stdin.flush()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the first reply is saved whole
            if default_path().exists():
                with ChatStore() as peek:
                    done = [c for c in peek.conversations() if
                            any(m.finish_reason for m in peek.get(c.id).messages)]
                if done:
                    break
            time.sleep(0.2)
        second = subprocess.run([*_PLAIN_CHAT, str(hf_small_dir)], input="/open 1\nFrom B\n", capture_output=True,
                                text=True, env=env, timeout=120)
        out, err = first.communicate("Second from A\n", timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert "open in another gpt2tui" in second.stderr and "not sent" in second.stderr
    with ChatStore() as store:
        (conversation,) = store.conversations()
        messages = [m.to_chat() for m in store.get(conversation.id).messages]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["First from A", "Second from A"]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(replies) == 2 and all(m["content"] and m.get("finish_reason") for m in messages[1::2])
    assert out.splitlines() == replies  # what A printed is what was saved
