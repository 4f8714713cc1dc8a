"""Export and import: JSON that keeps every branch and comes back as the same tree, Markdown of the path shown, the
fine-tuning format, and bad files refused in one line with nothing half-imported."""

import json

import pytest

from gpt2tui import transfer
from gpt2tui.store import ChatStore, ExportFolderMissingError, StoreError
from gpt2tui.transfer import TransferError, conversation_record, export_file, import_file


def branched(store):
    """A conversation whose second message was edited (the old continuation kept) and whose reply was regenerated."""
    other = store.create("Plain", model="tiny")
    hi = store.append_message(other.id, "user", "Hi").id
    store.append_message(other.id, "assistant", "Hello", "max_tokens")
    store.append_message(other.id, "assistant", "Hey there", "eos", parent_id=hi)
    c = store.create("Fruit", model="tiny", settings={"system_prompt": "Be brief.", "temperature": 0.3})
    store.append_message(c.id, "user", "Name a fruit.")
    a1 = store.append_message(c.id, "assistant", "Apple.", "eos").id
    store.append_message(c.id, "user", "Another?")
    store.append_message(c.id, "assistant", "Pear.", "eos")
    store.append_message(c.id, "user", "Another, and say why?", parent_id=a1)
    store.append_message(c.id, "assistant", "Plum, because", "cancelled")
    return c.id, other.id


def trees(store):
    return [conversation_record(store.get(c.id)) for c in store.conversations()]


def test_export_all_as_json_then_import_into_a_fresh_data_directory_gives_the_same_tree(tmp_path):
    with ChatStore(tmp_path / "one" / "chats.db") as one:
        fruit, plain = branched(one)
        written = export_file(one, f"{tmp_path / 'out'}/", "json", create_folder=True)
        assert written == tmp_path / "out" / "chats.json"
        before = trees(one)
    document = json.loads(written.read_text(encoding="utf-8"))
    assert (document["format"], document["version"]) == ("gpt2tui-chats", 1)
    record = next(c for c in document["conversations"] if c["id"] == fruit)
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another, and say why?"},
        {"role": "assistant", "content": "Plum, because"},
    ]
    assert len(record["nodes"]) == 6 and {"Another?", "Pear."} <= {n["content"] for n in record["nodes"]}
    assert set(record["nodes"][0]) == {"id", "parent_id", "role", "content", "finish_reason", "created"}
    assert record["settings"] == {"system_prompt": "Be brief.", "temperature": 0.3}

    with ChatStore(tmp_path / "two" / "chats.db") as two:
        assert sorted(import_file(two, written)) == sorted([fruit, plain])
        assert (
            trees(two) == before
        )  # ids, parents, times, finish reasons, settings, the path shown: all the same
        again = export_file(two, tmp_path / "again.json", "json")
        assert json.loads(again.read_text())["conversations"] == document["conversations"]
        # Into a store that has them already: numbered anew, the same shape.
        ids = import_file(two, written)
        assert not set(ids) & {fruit, plain} and len(two.conversations()) == 4
        copy = two.get(ids[0])
        assert [m.content for m in copy.messages] == [
            m.content for m in two.get(document["conversations"][0]["id"]).messages
        ]


def test_markdown_export_is_the_path_shown(tmp_path):
    with ChatStore() as store:
        fruit, _ = branched(store)
        one = export_file(store, tmp_path / "fruit.md", "md", conversation_id=fruit).read_text()
        assert "Plum, because" in one and "Pear." not in one and "*[stopped]*" in one
        everything = export_file(store, tmp_path, "md").read_text()
        assert everything.count("\n---\n") == 1 and "# Plain" in everything and "# Fruit" in everything
        with pytest.raises(StoreError, match="already exists"):
            export_file(store, tmp_path / "fruit.md", "md", conversation_id=fruit)
        with pytest.raises(ExportFolderMissingError):
            export_file(store, tmp_path / "nowhere" / "x.json")


def test_nothing_to_export_says_so(tmp_path):
    with ChatStore() as store, pytest.raises(TransferError, match="no conversations to export"):
        export_file(store, tmp_path / "x.json")


def test_the_fine_tuning_format_imports_as_conversations(tmp_path):
    records = [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Name a colour " * 10},
                {"role": "assistant", "content": "Blue"},
                {"role": "user", "content": "Why?"},
            ]
        },
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    lines = tmp_path / "train.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with ChatStore() as store:
        first, second = import_file(store, path)
        a, b = store.get(first), store.get(second)
        assert a.settings == {"system_prompt": "You are terse."} and [m.content for m in a.messages] == [
            "2+2?",
            "4",
        ]
        assert a.title == "2+2?" and b.title.startswith("Name a colour") and len(b.title) <= 48
        assert [m.role for m in b.messages] == ["user", "assistant", "user"]
        assert [m.parent_id for m in b.messages] == [None, b.messages[0].id, b.messages[1].id]
        assert len(import_file(store, lines)) == 2  # JSON lines too


def _export_with(tmp_path, change):
    with ChatStore(tmp_path / "src" / "chats.db") as src:
        branched(src)
        document = json.loads(transfer.export_json(src))
    change(document)
    return document


def _set(path, value):
    def change(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


_DELETE = object()
C0 = ("conversations", 0)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            _set((*C0, "nodes", 2, "role"), "robot"),
            'conversations[0].nodes[2].role: must be "user" or "assistant", got "robot"',
        ),
        (
            _set((*C0, "nodes", 1, "role"), "user"),
            "conversations[0].nodes[1].role: is 'user' where 'assistant' was expected",
        ),
        (
            _set((*C0, "nodes", 3, "parent_id"), 999),
            "conversations[0].nodes[3].parent_id: 999 is not the id of a node",
        ),
        (
            _set((*C0, "nodes", 0, "parent_id"), "x"),
            'conversations[0].nodes[0].parent_id: must be a whole number >= 1, got "x"',
        ),
        (
            _set((*C0, "nodes", 4, "content"), None),
            "conversations[0].nodes[4].content: must be text, got null",
        ),
        (
            _set((*C0, "nodes", 4, "created"), "yesterday"),
            "conversations[0].nodes[4].created: must be a time in Unix seconds",
        ),
        (_set((*C0, "active_id"), 12345), "conversations[0].active_id: 12345 is not the id of a node"),
        (_set((*C0, "settings"), [1]), "conversations[0].settings: must be an object, got a list"),
        (
            _set((*C0, "messages", 1, "content"), "changed"),
            "conversations[0].messages[1]: differs from the path",
        ),
        (_set((*C0, "nodes"), []), "conversations[0].nodes: must be a non-empty list"),
        (_set(("conversations",), []), "conversations: must be a non-empty list"),
        (_set(("format",), "elia"), "format: is \"elia\", not 'gpt2tui-chats'"),
        (_set(("version",), 2), "version: is 2: written by a newer gpt2tui"),
    ],
)
def test_a_bad_export_is_refused_in_one_line_naming_the_place(tmp_path, change, expected):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_export_with(tmp_path, change)))
    with ChatStore() as store:
        with pytest.raises(TransferError) as e:
            import_file(store, path)
        assert str(e.value).startswith(f"{path}: ") and expected in str(e.value) and "\n" not in str(e.value)
        assert store.conversations() == []  # nothing half-imported


def test_loops_and_duplicate_ids_are_found(tmp_path):
    def loop(document):
        nodes = document["conversations"][0]["nodes"]  # "Fruit": six nodes
        nodes[0]["parent_id"] = nodes[1]["id"]

    def duplicate(document):
        nodes = document["conversations"][0]["nodes"]
        nodes[2]["id"] = nodes[1]["id"]

    for change, expected in (
        (loop, "parent_id: leads around in a loop"),
        (duplicate, "is the id of another node too"),
    ):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(_export_with(tmp_path, change)))
        with ChatStore() as store, pytest.raises(TransferError, match=expected):
            import_file(store, path)
        (tmp_path / "src" / "chats.db").unlink()


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '[{"messages": [{"role": "user", "content": "a"}]}, {"messages": [{"role": "bot", "content": "b"}]}]',
            '[1].messages[0].role: must be "user" or "assistant", got "bot"',
        ),
        (
            '[{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]}]',
            "[0].messages[1].role: a system message may only come first",
        ),
        (
            '[{"messages": [{"role": "assistant", "content": "a"}]}]',
            "[0].messages[0].role: is 'assistant' where 'user' was expected first",
        ),
        ('[{"messages": [{"role": "user"}]}]', "[0].messages[0].content: must be text, got null"),
        ('[{"messages": []}]', "[0].messages: must be a non-empty list"),
        ('[{"messages": [{"role": "system", "content": "s"}]}]', "[0].messages: holds only a system message"),
        ('[{"text": "hello"}]', "[0]: has neither 'messages' nor 'nodes'"),
        ("[3]", "[0]: must be an object, got 3"),
        ("[]", "the list is empty"),
        ('"hello"', "expected a gpt2tui export"),
        (
            '{"messages": [{"role": "user", "content": "a"}',
            "not valid JSON: Expecting ',' delimiter at line 1",
        ),
        ('{"a": 1}\n{"b": \n', "not valid JSON (nor JSON lines)"),
    ],
)
def test_bad_records_are_refused_in_one_line(tmp_path, text, expected):
    path = tmp_path / "records.json"
    path.write_text(text)
    with ChatStore() as store:
        with pytest.raises(TransferError) as e:
            import_file(store, path)
        assert expected in str(e.value) and "\n" not in str(e.value)
        assert store.conversations() == []


def test_files_that_cannot_be_read(tmp_path):
    (tmp_path / "latin1.json").write_bytes(b'[{"messages": [{"role": "user", "content": "caf\xe9"}]}]')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with ChatStore() as store:
        for path, expected in (
            (tmp_path / "missing.json", "does not exist"),
            (tmp_path, "is a folder"),
            (tmp_path / "latin1.json", "not UTF-8"),
            (deep, "nested too deeply"),
            ("a\0b", "NUL byte"),
        ):
            with pytest.raises(TransferError, match=expected):
                import_file(store, path)
        assert store.conversations() == []


def test_the_export_and_import_commands(tmp_path, monkeypatch, capsys):
    from gpt2tui import cli

    with ChatStore() as store:
        fruit, _ = branched(store)
        before = trees(store)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export"]) == 0 and "exported 2 conversations to chats.json" in capsys.readouterr().err
    assert (
        cli.main(["export", str(fruit), "-o", "fruit.md"]) == 0
        and "Plum" in (tmp_path / "fruit.md").read_text()
    )
    assert cli.main(["export", "99"]) == 1 and "no conversation 99" in capsys.readouterr().err
    assert cli.main(["export", "--output", "-", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["conversations"]) == 2
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "fresh"))
    (tmp_path / "bad.json").write_text('[{"messages": [{"role": "user"}]}]')
    assert cli.main(["import", "bad.json"]) == 1
    err = capsys.readouterr().err
    assert (
        "bad.json: [0].messages[0].content: must be text, got null" in err
        and len(err.strip().splitlines()) == 1
    )
    assert cli.main(["import", "chats.json"]) == 0 and "imported 2 conversations" in capsys.readouterr().err
    with ChatStore() as fresh:
        assert trees(fresh) == before
