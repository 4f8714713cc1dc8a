"""Conversations as trees: edits and regenerated replies branch, switching branches, and the migration from the
schema before branches (version 1) that loses nothing."""

import sqlite3

import pytest

from gpt2tui import store as store_module
from gpt2tui.store import (
    SCHEMA_VERSION,
    ChatStore,
    Conversation,
    ConversationNotFoundError,
    Message,
    default_path,
)


@pytest.fixture
def store():
    with ChatStore() as s:
        yield s


def contents(messages):
    return [m.content for m in messages]


def three_turns(store):
    c = store.create(title="Three")
    ids = [
        store.append_message(c.id, role, text).id
        for role, text in [
            ("user", "u1"),
            ("assistant", "a1"),
            ("user", "u2"),
            ("assistant", "a2"),
            ("user", "u3"),
            ("assistant", "a3"),
        ]
    ]
    return c.id, ids


def test_an_edited_message_branches_and_the_old_continuation_stays(store):
    cid, (u1, a1, u2, a2, u3, a3) = three_turns(store)
    edited = store.append_message(cid, "user", "u2 edited", parent_id=a1)
    store.append_message(cid, "assistant", "a2 new")
    got = store.get(cid)
    assert contents(got.messages) == ["u1", "a1", "u2 edited", "a2 new"]
    assert [m.position for m in got.messages] == [0, 1, 2, 3] and got.messages[2].parent_id == a1
    assert contents(got.siblings(edited.id)) == ["u2", "u2 edited"]  # oldest first: "1/2", "2/2"
    assert len(got.nodes) == 8

    assert store.switch_branch(cid, u2) == a3  # the old branch comes back whole
    assert contents(store.get(cid).messages) == ["u1", "a1", "u2", "a2", "u3", "a3"]
    store.switch_branch(cid, edited.id)
    assert contents(store.get(cid).messages) == ["u1", "a1", "u2 edited", "a2 new"]
    with ChatStore() as again:  # the active path is stored, not kept in memory
        again.release(cid)
    assert store.get(cid).active_id == store.get(cid).messages[-1].id


def test_a_regenerated_reply_is_a_sibling_and_saves_go_to_it(store):
    cid, (u1, a1, *_) = three_turns(store)
    store.switch_branch(cid, a1)
    new = store.append_message(cid, "assistant", "", parent_id=u1)
    store.update_message(cid, new.id, "a1 again", "eos")
    got = store.get(cid)
    assert contents(got.messages) == ["u1", "a1 again"] and got.messages[-1].finish_reason == "eos"
    assert contents(got.siblings(new.id)) == ["a1", "a1 again"]
    store.update_last_message(cid, "a1 once more")  # the active leaf
    assert contents(store.get(cid).messages) == ["u1", "a1 once more"]
    with pytest.raises(ConversationNotFoundError):
        store.update_message(cid, 10_000, "nowhere")
    with pytest.raises(ConversationNotFoundError):
        store.append_message(cid, "user", "orphan", parent_id=10_000)


def test_switching_follows_the_branch_seen_last_at_each_fork(store):
    c = store.create()
    u1 = store.append_message(c.id, "user", "u1").id
    a1 = store.append_message(c.id, "assistant", "a1").id
    store.append_message(c.id, "user", "u2")
    old_leaf = store.append_message(c.id, "assistant", "a2").id
    other = store.append_message(
        c.id, "user", "u2b", parent_id=a1
    ).id  # newer, but not the one looked at last
    store.append_message(c.id, "assistant", "a2b")
    store.switch_branch(c.id, old_leaf)  # back to the older branch
    store.append_message(c.id, "assistant", "a1b", parent_id=u1)  # and away, at the fork above
    assert store.switch_branch(c.id, a1) == old_leaf  # back: the one seen last, not the newest (u2b)
    assert store.switch_branch(c.id, other) != old_leaf


def test_delete_last_message_removes_the_active_leaf_only(store):
    cid, (u1, a1, *_) = three_turns(store)
    store.append_message(cid, "assistant", "a1b", parent_id=u1)
    assert store.delete_last_message(cid).content == "a1b"
    got = store.get(cid)
    assert contents(got.messages) == ["u1"] and len(got.nodes) == 6  # the other branch stays
    store.delete(cid)
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_catching_up_writes_a_branch_and_completes_a_partly_saved_reply(store):
    cid, _ = three_turns(store)
    on_screen = [
        {"role": r, "content": t}
        for r, t in [("user", "u1"), ("assistant", "a1"), ("user", "u2 edited"), ("assistant", "a2 new")]
    ]
    store.save_conversation(cid, "Three", "m", {}, on_screen)
    got = store.get(cid)
    assert (
        contents(got.messages) == ["u1", "a1", "u2 edited", "a2 new"] and len(got.nodes) == 8
    )  # nothing lost
    # A reply whose last saves failed is the same message, grown: completed in place, not a sibling.
    store.update_last_message(cid, "a2", None)
    store.save_conversation(
        cid,
        "Three",
        "m",
        {},
        on_screen[:3] + [{"role": "assistant", "content": "a2 grown", "finish_reason": "eos"}],
    )
    got = store.get(cid)
    assert contents(got.messages)[-1] == "a2 grown" and len(got.nodes) == 8


def test_insert_conversations_keeps_free_ids_renumbers_taken_ones_and_is_all_or_nothing(store):
    def tree(cid, first_id):
        return Conversation(
            cid,
            "T",
            "m",
            {"seed": 1},
            1.0,
            2.0,
            nodes=[
                Message(first_id, 0, 0, "user", "q", None, 1.0, None),
                Message(first_id + 1, 0, 1, "assistant", "a", "eos", 1.5, first_id),
                Message(first_id + 2, 0, 1, "assistant", "b", "eos", 1.6, first_id),
            ],
            active_id=first_id + 1,
        )

    (kept,) = store.insert_conversations([tree(7, 40)])
    got = store.get(kept)
    assert kept == 7 and [m.id for m in got.nodes] == [40, 41, 42] and contents(got.messages) == ["q", "a"]
    assert (got.created, got.updated, got.settings) == (1.0, 2.0, {"seed": 1})
    (renumbered,) = store.insert_conversations([tree(7, 41)])  # both ids taken now
    again = store.get(renumbered)
    assert renumbered != 7 and contents(again.messages) == ["q", "a"] and len(again.nodes) == 3
    assert {m.id for m in again.nodes}.isdisjoint({40, 41, 42})
    bad = tree(None, 100)
    bad.nodes[2].role = "robot"
    with pytest.raises(ValueError, match="role"):
        store.insert_conversations([tree(20, 200), bad])
    assert [c.id for c in store.conversations()] == [renumbered, 7]  # the first one is not there either


# -- the migration from version 1 ------------------------------------------------------------------------------


def _version_1_database(path) -> None:
    """A database exactly as gpt2tui wrote it before branches: schema version 1, messages numbered by position."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    store_module._v0_to_v1(db)
    db.execute("PRAGMA user_version=1")
    rows = [
        (
            1,
            "Apples",
            "tiny",
            '{"temperature": 0.5}',
            10.0,
            11.0,
            [
                ("user", "Tell me about apples", None),
                ("assistant", "Red or green.", "eos"),
                ("user", "More?", None),
                ("assistant", "Crisp", "cancelled"),
            ],
        ),
        (2, "Empty", "", "{}", 12.0, 12.0, []),
        (
            3,
            "Pears",
            "tiny",
            "{}",
            13.0,
            14.0,
            [("user", "And pears?", None), ("assistant", "Pome fruit.", "eos")],
        ),
    ]
    message_id = 100
    for cid, title, model, settings, created, updated, messages in rows:
        db.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
            (cid, title, model, settings, created, updated),
        )
        for position, (role, content, finish) in enumerate(messages):
            message_id += 3  # ids with gaps, positions with a gap: kept as they are, in order
            db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, cid, position * 2, role, content, finish, 20.0 + message_id),
            )
    db.close()


def _v1_rows(path):
    with sqlite3.connect(path) as db:
        return (
            db.execute("SELECT * FROM conversations ORDER BY id").fetchall(),
            db.execute(
                "SELECT id, conversation_id, role, content, finish_reason, created FROM messages "
                "ORDER BY conversation_id, position"
            ).fetchall(),
        )


def test_a_version_1_database_becomes_a_tree_without_loss(isolated_home):
    path = default_path()
    _version_1_database(path)
    conversations_before, messages_before = _v1_rows(path)
    with ChatStore() as s:
        assert [c.title for c in s.conversations()] == ["Pears", "Empty", "Apples"]
        apples = s.get(1)
        assert [
            (m.id, m.conversation_id, m.role, m.content, m.finish_reason, m.created)
            for c in (1, 3)
            for m in s.get(c).messages
        ] == messages_before
        assert [m.position for m in apples.messages] == [0, 1, 2, 3]
        assert [m.parent_id for m in apples.messages] == [None, *[m.id for m in apples.messages[:-1]]]
        assert apples.active_id == apples.messages[-1].id and apples.settings == {"temperature": 0.5}
        assert s.get(2).messages == [] and s.get(2).active_id is None
        assert [c.title for c in s.search("pome")] == ["Pears"]
        s.append_message(3, "user", "Thanks")  # goes on after the last message
        assert contents(s.get(3).messages) == ["And pears?", "Pome fruit.", "Thanks"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert [tuple(r[:6]) for r in db.execute("SELECT * FROM conversations ORDER BY id")][:2] == [
            tuple(r) for r in conversations_before[:2]
        ]
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
            "conversations",
            "messages",
        }


def test_a_migration_that_fails_leaves_the_version_1_database_as_it_was(isolated_home, monkeypatch):
    path = default_path()
    _version_1_database(path)
    before = _v1_rows(path)

    def broken(db):
        raise RuntimeError("power cut")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, broken])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="power cut"):
        ChatStore()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert _v1_rows(path) == before  # one transaction: the tree's half-made tables are gone too
