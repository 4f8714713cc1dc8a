"""Safety and back-pressure: the API key, the bounded queue (429), cancelling on disconnect, body and CORS limits."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from gpt2tui.serve.settings import ServeSettings
from gpt2tui_testkit.serving import eventually, serve


@pytest.fixture(scope="module")
def keyed(tiny_dir):
    served = serve(tiny_dir, api_key="s3cret")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def narrow(long_dir):
    """One row and one waiting place: the second request waits, the third is refused."""
    served = serve(long_dir, max_batch=1, max_queue=1)
    yield served
    served.stop()


def test_with_a_key_every_route_needs_it(keyed):
    with pytest.raises(openai.AuthenticationError) as e:
        keyed.client(api_key="wrong").models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    for path in ("/health", "/metrics", "/v1/models", "/api/conversations", "/nowhere"):
        r = httpx.get(keyed.url + path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["error"]["message"]
    # Only the chat page's own files come without it: a browser opening the page cannot send the header, and the
    # page then asks for the key (tests/serve/test_page.py).
    assert httpx.get(keyed.url + "/").status_code == 200
    r = httpx.post(keyed.url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401
    reply = keyed.client(api_key="s3cret").completions.create(model="m", prompt="x", max_tokens=2)
    assert reply.usage.completion_tokens == 2
    assert httpx.get(keyed.url + "/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(narrow):
    client = narrow.client(max_retries=0)
    scheduler = narrow.engine.scheduler
    running = client.completions.create(model="m", prompt="Fog", max_tokens=1000, stream=True)
    next(iter(running))  # the one row is taken
    waiting = threading.Thread(
        target=lambda: client.completions.create(model="m", prompt="Bell", max_tokens=2)
    )
    waiting.start()
    eventually(lambda: scheduler.queue_depth == 1)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="m", prompt="Ships", max_tokens=2)
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "1"
    assert e.value.body["code"] == "queue_full"
    running.close()  # the client leaves: its row is cancelled and the waiting request runs
    waiting.join(timeout=60)
    assert not waiting.is_alive()


def test_a_streaming_client_that_disconnects_is_cancelled(narrow):
    metrics = narrow.engine.scheduler.metrics
    before = metrics.rows_finished["cancelled"]
    stream = narrow.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=1000, stream=True
    )
    chunks = iter(stream)
    next(chunks), next(chunks)
    stream.close()
    eventually(lambda: metrics.rows_finished["cancelled"] == before + 1)
    assert narrow.engine.scheduler.running == 0


def test_a_waiting_client_that_disconnects_is_cancelled(narrow):
    """A plain (non-streaming) request is watched for the disconnect too, here while it still waits in the queue."""
    scheduler = narrow.engine.scheduler
    before = scheduler.metrics.rows_finished["cancelled"]
    running = narrow.client().completions.create(model="m", prompt="Fog", max_tokens=1000, stream=True)
    next(iter(running))
    with pytest.raises(httpx.ReadTimeout):
        # The one row is busy: this waits until the client gives up.
        httpx.post(narrow.url + "/v1/completions", json={"prompt": "Bell", "max_tokens": 5}, timeout=0.5)
    running.close()
    eventually(lambda: scheduler.metrics.rows_finished["cancelled"] == before + 2)
    eventually(lambda: scheduler.running == 0 and scheduler.queue_depth == 0)


def test_bodies_over_the_limit_get_413(server):
    limit = ServeSettings().max_body_bytes
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x" * (limit + 1)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunked():
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096

    r = httpx.post(
        server.url + "/v1/completions", content=chunked(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_no_cors_unless_an_origin_is_given(server, tiny_dir):
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    r = httpx.options(server.url + "/v1/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(server.url + "/v1/models", headers={"Origin": "http://example.test"})
    assert "access-control-allow-origin" not in r.headers
    allowed = serve(tiny_dir, cors_origins=("http://example.test",))
    try:
        r = httpx.options(allowed.url + "/v1/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://example.test"
        r = httpx.options(
            allowed.url + "/v1/completions", headers={**preflight, "Origin": "http://other.test"}
        )
        assert r.status_code == 400
    finally:
        allowed.stop()


def test_settings_keep_history_off_when_exposed_without_a_key():
    assert ServeSettings().loopback and ServeSettings().history_enabled
    assert ServeSettings(host="localhost").history_enabled
    assert ServeSettings(host="::1").loopback
    exposed = ServeSettings(host="0.0.0.0")
    assert exposed.exposed_without_key and not exposed.history_enabled
    assert ServeSettings(host="0.0.0.0", api_key="k").history_enabled
