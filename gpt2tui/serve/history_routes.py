"""`/api/conversations`: the chat page's conversations, kept in the chat app's own SQLite history (`ChatStore`), so a
chat started in the browser continues in the terminal and the other way round.

    GET    /api/conversations                  the list, most recent first (`?q=` searches, `?limit=`)
    POST   /api/conversations                  a new, empty one
    GET    /api/conversations/{id}             one, with the path of messages the apps show and its sampling settings
    PATCH  /api/conversations/{id}             rename
    DELETE /api/conversations/{id}             delete
    POST   /api/conversations/{id}/messages    append under the active leaf (a reply starts empty and unfinished)
    PATCH  /api/conversations/{id}/messages/{message_id}   a streaming reply's text so far, then its finish reason

Rows are written as the chat app writes them (`tui/screens/chat.py`, `repl.py`): the title is the first message
shortened, the model is the name the server loaded (`--model` as given), settings stay empty so the app applies its
own defaults, and a user message after a user message first gets the cancelled empty reply the app records there,
so the turns alternate.

The store claims a conversation while it writes it (one writer per conversation, `ChatStore.claim`); the server lets
go after every request, so the terminal app can open and continue the chat as soon as the page is done with it. One
the app holds answers 409 here, and reads still work.

Only on a loopback address or behind --api-key (`ServeSettings.history_enabled`): otherwise every route here answers
403 and the page chats without saving.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import APIRouter, Query, Request, Response

from ..chat import ChatError
from ..session import ChatSettings
from ..store import (
    DEFAULT_TITLE,
    ChatStore,
    Conversation,
    ConversationInUseError,
    ConversationNotFoundError,
    DatabaseMovedWarning,
    Message,
    StoreError,
    StoreWriteError,
)
from .errors import APIError
from .history_schemas import (
    MAX_TITLE,
    ConversationList,
    ConversationOut,
    ConversationSummary,
    MessageOut,
    MessageUpdate,
    NewConversation,
    NewMessage,
    Rename,
    Sampling,
)
from .settings import ServeSettings

log = logging.getLogger("gpt2tui.serve")

TITLE_LENGTH = 48  # as the chat app shortens a first message into a title (tui/screens/chat.py, `title_from`)


def title_from(text: str) -> str:
    line = " ".join(text.split())
    if not line:
        return DEFAULT_TITLE
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


class History:
    """The store behind the routes, opened on first use (a server that no page talks to never touches the file)."""

    def __init__(self, path: str | Path | None):
        self.path = path
        self._store: ChatStore | None = None
        self._lock = threading.Lock()
        # One request at a time on the store: each lets go of its conversation's claim when done, which must not
        # drop a claim that another request's write is counting on (claims are per store, not per request).
        self.serial = threading.Lock()

    def store(self) -> ChatStore:
        with self._lock:
            if self._store is None:
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", DatabaseMovedWarning)
                        self._store = ChatStore(self.path)
                except StoreError as e:
                    raise APIError(
                        503,
                        f"the chat history cannot be opened: {e}",
                        "server_error",
                        code="history_unavailable",
                    ) from None
                for w in caught:
                    log.warning("%s", w.message)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


@contextmanager
def _history(request: Request) -> Iterator[ChatStore]:
    history: History = request.app.state.history
    store = history.store()
    with history.serial:
        yield store


@contextmanager
def _writing(store: ChatStore, conversation_id: int) -> Iterator[None]:
    """Store errors as answers, and the conversation let go afterwards for the terminal app."""
    try:
        yield
    except ConversationNotFoundError as e:
        raise APIError(404, f"{e}; it may have been deleted", code="conversation_not_found") from None
    except ConversationInUseError:
        raise APIError(
            409,
            f"conversation {conversation_id} is open in gpt2tui in a terminal, which writes it; "
            "it can be read here: start a new chat to write",
            code="conversation_in_use",
        ) from None
    except StoreError as e:
        raise _store_error(e) from None
    finally:
        store.release(conversation_id)


def _store_error(e: StoreError) -> APIError:
    """A write the database refused (busy, a full disk, read-only): nothing was half-written, and the page keeps
    the text."""
    code = f"history_{e.kind}" if isinstance(e, StoreWriteError) else "history_unavailable"
    return APIError(503, f"not saved: {e}", "server_error", code=code)


def _summary(c: Conversation) -> ConversationSummary:
    return ConversationSummary(id=c.id, title=c.title, model=c.model, created=c.created, updated=c.updated)


def _message(m: Message) -> MessageOut:
    return MessageOut(
        id=m.id,
        parent_id=m.parent_id,
        role=m.role,
        content=m.content,
        finish_reason=m.finish_reason,
        created=m.created,
    )


def _sampling(settings: dict) -> Sampling:
    try:
        chat = ChatSettings.from_dict(settings)
    except (ChatError, TypeError):
        chat = ChatSettings()  # as the chat app does with settings it cannot use: the defaults apply
    top_p = chat.top_p if chat.top_p not in (None, 0, 1.0) else None
    return Sampling(
        system_prompt=chat.system_prompt, temperature=chat.temperature, top_p=top_p, seed=chat.seed
    )


def _writable(store: ChatStore, conversation_id: int) -> bool:
    if store.read_only is not None:
        return False
    held = store.claim(conversation_id)
    store.release(conversation_id)
    return held


def _full(store: ChatStore, conversation_id: int) -> ConversationOut:
    try:
        c = store.get(conversation_id)
    except ConversationNotFoundError as e:
        raise APIError(404, f"{e}; it may have been deleted", code="conversation_not_found") from None
    return ConversationOut(
        **_summary(c).model_dump(),
        messages=[_message(m) for m in c.messages],
        sampling=_sampling(c.settings),
        writable=_writable(store, c.id),
    )


router = APIRouter(prefix="/api/conversations")


@router.get("")
def list_conversations(
    request: Request, q: str = Query("", max_length=MAX_TITLE), limit: int = Query(200, ge=1, le=1000)
) -> ConversationList:
    with _history(request) as store:
        found = store.search(q, limit) if q.strip() else store.conversations(limit)
    return ConversationList(conversations=[_summary(c) for c in found])


@router.post("", status_code=201)
def create_conversation(body: NewConversation, request: Request) -> ConversationOut:
    title = title_from(body.title or "")
    with _history(request) as store:
        try:
            created = store.create(title, model=request.app.state.engine.model_name, settings={})
        except StoreError as e:
            raise _store_error(e) from None
        store.release(created.id)
        return _full(store, created.id)


@router.get("/{conversation_id}")
def get_conversation(conversation_id: int, request: Request) -> ConversationOut:
    with _history(request) as store:
        return _full(store, conversation_id)


@router.patch("/{conversation_id}")
def rename_conversation(conversation_id: int, body: Rename, request: Request) -> ConversationSummary:
    title = " ".join(body.title.split())
    if not title:
        raise APIError(400, "title: a title needs at least one character that is not a space", param="title")
    with _history(request) as store, _writing(store, conversation_id):
        store.rename(conversation_id, title)
        return _summary(store.get(conversation_id))


@router.delete("/{conversation_id}", status_code=204)
def delete_conversation(conversation_id: int, request: Request) -> Response:
    with _history(request) as store, _writing(store, conversation_id):
        store.delete(conversation_id)
    return Response(status_code=204)


@router.post("/{conversation_id}/messages", status_code=201)
def append_message(conversation_id: int, body: NewMessage, request: Request) -> MessageOut:
    if body.role == "user" and not body.content.strip():
        raise APIError(400, "content: the message is empty; type something to send", param="content")
    with _history(request) as store, _writing(store, conversation_id):
        path = store.get(conversation_id).messages
        last = path[-1].role if path else None
        if body.role == "assistant" and last != "user":
            where = "is empty" if last is None else "ends with a reply"
            raise APIError(
                400,
                f"role: a reply follows a user message; this conversation {where}: append the "
                "user's message first",
                param="role",
            )
        if body.role == "user" and last == "user":
            # A user message whose reply never came (a page closed before it started): recorded as the chat app
            # records it, an empty stopped reply, so that user and assistant still alternate.
            store.append_message(conversation_id, "assistant", "", "cancelled")
        return _message(store.append_message(conversation_id, body.role, body.content, body.finish_reason))


@router.patch("/{conversation_id}/messages/{message_id}")
def update_message(
    conversation_id: int, message_id: int, body: MessageUpdate, request: Request
) -> MessageOut:
    with _history(request) as store, _writing(store, conversation_id):
        store.update_message(conversation_id, message_id, body.content, body.finish_reason)
        found = next((m for m in store.get(conversation_id).nodes if m.id == message_id), None)
        if found is None:  # deleted in between, by the terminal app
            raise ConversationNotFoundError(f"conversation {conversation_id} has no message {message_id}")
        return _message(found)


off_router = APIRouter(prefix="/api/conversations")


@off_router.api_route("{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"], include_in_schema=False)
def history_off(request: Request) -> None:
    settings: ServeSettings = request.app.state.settings
    raise APIError(
        403,
        f"the chat history is off: this server listens on {settings.host} without --api-key, so "
        "anyone who reaches it could read your chats; restart it with --api-key KEY to keep them",
        "permission_error",
        code="history_off",
    )


def install(app, settings: ServeSettings) -> None:
    """The history routes when `settings.history_enabled`, else routes that say they are off."""
    app.state.history = History(settings.history_path)
    app.include_router(router if settings.history_enabled else off_router)
