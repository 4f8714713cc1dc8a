"""The chat page's conversation routes (`/api/conversations`) through FastAPI's TestClient, over the chat app's own
SQLite history; and a conversation written through them continued by the terminal app itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gpt2tui import load_model
from gpt2tui.serve.app import create_app
from gpt2tui.serve.engine import Engine
from gpt2tui.serve.settings import ServeSettings
from gpt2tui.session import ChatSession, ChatSettings
from gpt2tui.store import ChatStore
from gpt2tui.tui import ChatApp
from gpt2tui.tui.screens.chat_branches import shown_messages
from gpt2tui.tui.widgets import MessageView
from gpt2tui_testkit.tui import loaded, reply_done, run, send

API = "/api/conversations"


@pytest.fixture(scope="module")
def engine(tiny_dir) -> Engine:
    return Engine.load(str(tiny_dir), device="cpu")


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "chats.db"


@pytest.fixture
def client(engine, db):
    with TestClient(create_app(engine, ServeSettings(history_path=str(db)))) as c:
        yield c


def _chat(client, text: str, reply: str, finish: str = "stop", conversation: int | None = None) -> int:
    """One turn as the page writes it: the user's message, the reply empty and unfinished, then the reply."""
    if conversation is None:
        conversation = client.post(API, json={"title": text}).json()["id"]
    assert (
        client.post(f"{API}/{conversation}/messages", json={"role": "user", "content": text}).status_code
        == 201
    )
    made = client.post(f"{API}/{conversation}/messages", json={"role": "assistant", "content": ""})
    assert made.status_code == 201 and made.json()["finish_reason"] is None
    done = client.patch(
        f"{API}/{conversation}/messages/{made.json()['id']}", json={"content": reply, "finish_reason": finish}
    )
    assert done.status_code == 200 and done.json()["content"] == reply
    return conversation


def test_a_conversation_is_made_listed_read_renamed_and_deleted(client, engine):
    made = client.post(
        API, json={"title": "  What is a   transformer, and why does attention scale the way it does?"}
    )
    assert made.status_code == 201
    c = made.json()
    # The chat app's title rule (first message, spaces folded, 48 characters), its model name, empty settings:
    # the app's own defaults, which the page samples with too.
    assert c["title"] == "What is a transformer, and why does attention s…"
    assert c["model"] == engine.model_name and c["messages"] == [] and c["writable"]
    assert c["sampling"] == {"system_prompt": "", "temperature": 0.7, "top_p": 0.95, "seed": None}
    other = client.post(API, json={}).json()
    assert other["title"] == "New chat"
    listed = client.get(API).json()["conversations"]
    assert [x["id"] for x in listed] == [other["id"], c["id"]]  # most recent first
    assert [x["id"] for x in client.get(API, params={"q": "TRANSFORMER"}).json()["conversations"]] == [
        c["id"]
    ]

    renamed = client.patch(f"{API}/{c['id']}", json={"title": " Attention "})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Attention"
    assert client.get(f"{API}/{c['id']}").json()["title"] == "Attention"
    assert client.delete(f"{API}/{c['id']}").status_code == 204
    gone = client.get(f"{API}/{c['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "conversation_not_found"
    assert [x["id"] for x in client.get(API).json()["conversations"]] == [other["id"]]


def test_messages_follow_the_active_path_as_the_chat_app_writes_them(client):
    cid = _chat(client, "Hi", "Hello! How can I help?")
    _chat(client, "Tell me a story", "Once upon a", "cancelled", conversation=cid)
    c = client.get(f"{API}/{cid}").json()
    assert [(m["role"], m["content"], m["finish_reason"]) for m in c["messages"]] == [
        ("user", "Hi", None),
        ("assistant", "Hello! How can I help?", "stop"),
        ("user", "Tell me a story", None),
        ("assistant", "Once upon a", "cancelled"),
    ]
    assert [m["parent_id"] for m in c["messages"]] == [None] + [m["id"] for m in c["messages"][:-1]]

    # A user message after a user message (a page closed before its reply was written): the app's empty stopped
    # reply goes between them, so the turns alternate as the chat template needs.
    client.post(f"{API}/{cid}/messages", json={"role": "user", "content": "Hello?"})
    client.post(f"{API}/{cid}/messages", json={"role": "user", "content": "Anyone?"})
    roles = [(m["role"], m["finish_reason"]) for m in client.get(f"{API}/{cid}").json()["messages"][4:]]
    assert roles == [("user", None), ("assistant", "cancelled"), ("user", None)]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"role": "assistant", "content": "x"}, "role", "a reply follows a user message"),
        ({"role": "system", "content": "x"}, "role", "'user' or 'assistant'"),
        ({"role": "user", "content": "   "}, "content", "the message is empty"),
        ({"role": "user", "content": 5}, "content", "string"),
        ({"role": "user", "content": "x", "finish_reason": "done"}, "finish_reason", "'cancelled'"),
        ({"role": "user", "content": "x", "parent": 3}, "parent", "Extra inputs"),
        ({"content": "x"}, "role", "required"),
    ],
)
def test_bad_messages_get_one_clear_400(client, body, param, says):
    cid = client.post(API, json={"title": "x"}).json()["id"]
    r = client.post(f"{API}/{cid}/messages", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"
    assert client.get(f"{API}/{cid}").json()["messages"] == []  # nothing half-written


def test_missing_conversations_and_messages_are_404s(client):
    assert client.post(f"{API}/99/messages", json={"role": "user", "content": "x"}).status_code == 404
    cid = _chat(client, "Hi", "Hello")
    r = client.patch(f"{API}/{cid}/messages/999", json={"content": "x"})
    assert r.status_code == 404 and "has no message 999" in r.json()["error"]["message"]
    assert client.patch(f"{API}/{cid}", json={"title": ""}).status_code == 400
    assert client.get(f"{API}/abc").status_code == 400


def test_a_conversation_the_terminal_app_holds_is_read_only_here(client, db):
    cid = _chat(client, "Hi", "Hello")
    with ChatStore(db) as app_store:
        assert app_store.claim(cid)  # the server let go after its writes: the app can take it
        c = client.get(f"{API}/{cid}").json()
        assert not c["writable"] and len(c["messages"]) == 2
        r = client.post(f"{API}/{cid}/messages", json={"role": "user", "content": "More"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "conversation_in_use"
        assert "open in gpt2tui in a terminal" in r.json()["error"]["message"]
    assert client.get(f"{API}/{cid}").json()["writable"]  # the app closed it


def test_history_routes_are_off_when_reachable_without_a_key(engine, db):
    exposed = ServeSettings(host="0.0.0.0", history_path=str(db))
    with TestClient(create_app(engine, exposed)) as c:
        for method, path in (("GET", API), ("POST", API), ("GET", f"{API}/1"), ("DELETE", f"{API}/1")):
            r = c.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 403, path
            assert r.json()["error"]["code"] == "history_off" and "--api-key" in r.json()["error"]["message"]
        assert c.get("/").status_code == 200  # the page still chats, without saving
    assert not db.exists()
    keyed = ServeSettings(host="0.0.0.0", api_key="k", history_path=str(db))
    with TestClient(create_app(engine, keyed)) as c:
        assert c.get(API).status_code == 401
        assert c.get(API, headers={"Authorization": "Bearer k"}).json() == {"conversations": []}


def test_with_a_key_only_the_page_files_are_public(engine, db):
    with TestClient(create_app(engine, ServeSettings(api_key="k", history_path=str(db)))) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for asset in ("app.js", "api.js", "markdown.js", "app.css"):
            assert c.get(f"/static/{asset}").status_code == 200, asset
        for path in (API, "/v1/models", "/static/../api/conversations", "/metrics"):
            assert c.get(path).status_code == 401, path
        assert c.post("/", json={}).status_code == 401  # only reading the page is free


def test_a_chat_written_through_the_api_is_what_the_chat_app_reads(client, db, engine):
    cid = _chat(client, "Hi there", "Hello!")
    _chat(client, "Again", "Half a rep", "cancelled", conversation=cid)
    with ChatStore(db) as store:
        c = store.get(cid)
        assert c.model == engine.model_name and c.title == "Hi there"
        ChatSettings.from_dict(c.settings)  # the app's settings parse (empty: its defaults)
        shown = shown_messages(c)
        assert [(m["role"], m["content"], m.get("finish_reason")) for m in shown] == [
            ("user", "Hi there", None),
            ("assistant", "Hello!", "stop"),
            ("user", "Again", None),
            ("assistant", "Half a rep", "cancelled"),
        ]
        session = ChatSession(engine.model, engine.tokenizer, model_name=c.model)
        # The chat template takes it as it is.
        session.set_messages([{"role": m["role"], "content": m["content"]} for m in shown])
        assert store.claim(cid)


def test_the_terminal_app_continues_a_chat_started_in_the_browser(client, db, engine, tiny_dir):
    cid = _chat(client, "Started in the browser", "Hello from the page.")
    model, tokenizer = load_model(str(tiny_dir), device="cpu")
    app = ChatApp(
        engine.model_name,
        store_path=db,
        settings={"max_new_tokens": 4},
        loader=lambda: ChatSession(model, tokenizer, model_name=engine.model_name),
    )

    async def body():
        async with app.run_test() as pilot:
            await loaded(pilot)
            assert app.chat.conversation_id == cid  # the latest conversation opens at start
            shown = [(v.role, v.content) for v in app.chat.query(MessageView)]
            assert shown == [("user", "Started in the browser"), ("assistant", "Hello from the page.")]
            await send(pilot, "And in the terminal")
            await reply_done(pilot)
            await pilot.press("ctrl+q")

    run(body())
    messages = client.get(f"{API}/{cid}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == "And in the terminal" and messages[3]["finish_reason"] is not None
