"""Plain ASGI middleware (no buffering of responses, so streams stream): the API key, the body limit, request counts.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: that one runs the app in a task of its own, which delays the
cancellation a client's disconnect must bring to a streaming response.
"""

from __future__ import annotations

import collections
import hmac
import json

from .errors import error_body


async def _send_error(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _header(scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers", ()) if k.lower() == name), None)


def public(scope) -> bool:
    """The chat page's own files: a browser opening the page cannot send a header, and they hold no data (the page
    then asks for the key and sends it with every call it makes)."""
    path = scope.get("path", "")
    return (
        scope.get("method") in ("GET", "HEAD")
        and (path == "/" or path.startswith("/static/"))
        and ".." not in path  # no way around the key through a path that climbs out of /static
    )


class BearerAuth:
    """With a key, every request (every route of the API, the history and the metrics alike) needs
    `Authorization: Bearer KEY`; only the page's own files are given without it (`public`)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or public(scope):
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization")
        if given is not None and hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        message = (
            "no API key was sent; send it as the header 'Authorization: Bearer KEY'"
            if given is None
            else "the API key is wrong; send the key the server was started with (--api-key)"
        )
        await _send_error(
            send, 401, error_body(message, code="invalid_api_key"), [(b"www-authenticate", b"Bearer")]
        )


class BodyLimit:
    """Refuses a request body larger than `limit` bytes with 413, before anything parses it."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(send)
        # Read it all (it is small, or refused): a chunked body has no length to check beforehand.
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # from here on: the disconnect, which cancels a request in flight

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        await _send_error(
            send,
            413,
            error_body(f"the request body is larger than {self.limit:,} bytes", code="body_too_large"),
        )


class RequestCounter:
    """Counts answered requests by route template and status, for /metrics."""

    def __init__(self, app, counts: collections.Counter):
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                route = scope.get("route")
                path = (
                    getattr(route, "path", None) or "other"
                )  # unmatched paths share a label: no label explosion
                self.counts[(path, message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)
