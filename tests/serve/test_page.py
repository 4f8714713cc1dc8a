"""The chat page at `/` in a real headless Chromium (Debian's `chromium`, driven by Playwright's sync API) against a
real server on a free loopback port: streaming, stopping, the history across reloads, the API key, and model output
that tries to become HTML.

Playwright cannot download its own browser here, so the tests use the system's `chromium`, which `make test` installs
where apt-get can. Without it they skip, saying why; under CI=true they fail instead, so a CI run never passes with the
page untested.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from gpt2tui.serve.engine import Engine
from gpt2tui.serve.settings import ServeSettings
from gpt2tui.store import ChatStore
from gpt2tui_testkit.serving import Served, eventually

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the dev extra is not installed: said below, as a skip (or a failure under CI)
    sync_playwright = None

# Model output that would run script if it reached the page as HTML, beside Markdown that must still render.
ATTACK = (
    'Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script>\n\n'
    '[click me](javascript:window.__pwned=3) [site](https://example.com/a_b_c?x=1&y="z") **bold** '
    "`<b>code</b>`\n\n"
    '```html\n<script>window.__pwned=4</script>\n<a href="x" onclick="y">\n```\n'
)


def _browser_problem() -> str | None:
    if sync_playwright is None:
        return "Playwright is not installed: pip install -e '.[dev]' (make test does)"
    if shutil.which("chromium") is None:
        return (
            "Debian's chromium is not installed: apt-get install chromium (make test installs it where apt-get "
            "is available); Playwright cannot download its own browser here"
        )
    return None


@pytest.fixture(scope="module")
def browser():
    problem = _browser_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the page cannot be tested: {problem}")
        pytest.skip(problem)
    # Waits for replies on a loaded 2-core machine: a limit for hung tests, not a measure of speed.
    expect.set_options(timeout=30_000)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"))
        yield chromium
        chromium.close()


class _Server:
    """A served tiny model with its own history file, and a switch that slows each forward pass, so that a reply
    is still streaming when the test stops it."""

    def __init__(self, model_dir, history, api_key=None):
        self.slow = threading.Event()
        self.engine = Engine.load(str(model_dir), device="cpu")
        self.engine.model.transformer.ln_f.register_forward_pre_hook(
            lambda module, args: time.sleep(0.05) if self.slow.is_set() else None
        )
        self.served = Served(self.engine, ServeSettings(port=0, api_key=api_key, history_path=str(history)))
        self.url = self.served.url
        self.history = history

    def stop(self):
        self.served.stop()


@pytest.fixture(scope="module")
def server(browser, tiny_dir, tmp_path_factory):
    """After `browser`: without one the tests skip before a server starts."""
    s = _Server(tiny_dir, tmp_path_factory.mktemp("history") / "chats.db")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keyed(browser, tiny_dir, tmp_path_factory):
    s = _Server(tiny_dir, tmp_path_factory.mktemp("history") / "chats.db", api_key="s3cret")
    yield s
    s.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context()  # its own storage: no key or page state from another test
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    context.close()
    assert not errors, errors


def _open(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready]")


def _send(page, text):
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _replies(page):
    return page.locator("#messages .message.assistant")


def test_a_reply_streams_stops_and_is_there_after_a_reload(server, page):
    cancelled = server.engine.scheduler.metrics.rows_finished["cancelled"]
    _open(page, server.url + "/")
    server.slow.set()
    _send(page, "Tell me a long story")
    streaming = page.locator("#messages .message.assistant.streaming .body")
    expect(streaming).not_to_have_text("")
    first = streaming.inner_text()
    page.wait_for_function(
        "n => document.querySelector('.message.streaming .body').innerText.length > n", arg=len(first)
    )  # more text arrives while it streams
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    stopped = _replies(page).last
    expect(stopped).to_have_attribute("data-finish", "cancelled")
    expect(stopped.locator(".note")).to_have_text("stopped")
    # The page closed the stream; the server cancelled the row instead of generating the rest for nobody.
    eventually(lambda: server.engine.scheduler.metrics.rows_finished["cancelled"] > cancelled)
    server.slow.clear()
    expect(page.locator("#send")).to_be_visible()

    _send(page, "And then?")
    expect(_replies(page)).to_have_count(2)
    expect(_replies(page).last).not_to_have_attribute("data-finish", "")
    before = page.locator("#messages .message .body").all_inner_texts()
    title = page.inner_text("#title")
    assert title == "Tell me a long story"

    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#messages .message .body").all_inner_texts() == before
    expect(_replies(page).first).to_have_attribute("data-finish", "cancelled")
    expect(page.locator("#conversations button[aria-current]")).to_have_text(title)

    # A fresh page finds it in the list, and it is what the chat app reads.
    _open(page, server.url + "/")
    page.click(f"#conversations button:text-is('{title}')")
    expect(page.locator("#title")).to_have_text(title)
    assert page.locator("#messages .message .body").all_inner_texts() == before
    with ChatStore(server.history) as store:
        (c,) = store.conversations()
        messages = store.get(c.id).messages
        assert c.model == server.engine.model_name
        assert [(m.role, m.finish_reason) for m in messages][:3] == [
            ("user", None),
            ("assistant", "cancelled"),
            ("user", None),
        ]
        assert messages[3].finish_reason in ("stop", "max_tokens") and messages[3].content


def test_model_output_is_shown_as_text_never_as_html(server, page):
    def canned(route):
        chunks = [
            {"choices": [{"index": 0, "delta": {"content": ATTACK[i : i + 7]}, "finish_reason": None}]}
            for i in range(0, len(ATTACK), 7)
        ]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", canned)
    _open(page, server.url + "/")
    page.click("#new-chat")
    _send(page, "Say something dangerous")
    reply = _replies(page).last
    expect(reply).to_have_attribute("data-finish", "stop")

    def check():
        body = reply.locator(".body")
        assert body.locator("img, script, [onerror], [onclick]").count() == 0
        assert page.evaluate("window.__pwned") is None
        text = body.inner_text()
        assert (
            '<img src=x onerror="window.__pwned=1">' in text and "<script>window.__pwned=2</script>" in text
        )
        assert "[click me](javascript:window.__pwned=3)" in text  # not a link: only http(s) URLs become links
        assert body.locator("a").count() == 1
        assert body.locator("a").get_attribute("href") == 'https://example.com/a_b_c?x=1&y="z"'
        assert body.locator("strong").inner_text() == "bold"
        assert body.locator("p code").inner_text() == "<b>code</b>"
        assert body.locator("pre code.language-html").inner_text() == (
            '<script>window.__pwned=4</script>\n<a href="x" onclick="y">'
        )

    check()
    page.reload()  # and as saved in the history, read back
    page.wait_for_selector("body[data-ready]")
    reply = _replies(page).last
    check()


def test_the_renderer_adds_no_tag_or_attribute_of_its_own_making(server, page):
    _open(page, server.url + "/")
    attempts = [
        ATTACK,
        '[x](https://a.b/" onmouseover="alert(1))',
        "[x](https://a.b/'><script>alert(1)</script>)",
        '```" onload="x\n<svg onload=alert(1)>',
        "# <iframe src=javascript:alert(1)>\n- <b onmouseover=x>\n1. &lt;already escaped&gt;",
        "> <style>*{}</style>\n\n***\n\n**<i>**",
        "`` ` `` <!-- comment --> <![CDATA[x]]> \u0000 <a href=x>",
    ]
    found = page.evaluate(
        """async (sources) => {
            const { renderMarkdown } = await import('/static/markdown.js');
            const allowed = {A: ['href', 'rel', 'target'], CODE: ['class'], OL: ['start']};
            const problems = [];
            for (const source of sources) {
                const box = document.createElement('template');
                box.innerHTML = renderMarkdown(source);
                for (const el of box.content.querySelectorAll('*')) {
                    if (!/^(P|BR|STRONG|EM|DEL|CODE|PRE|A|H[1-6]|UL|OL|LI|BLOCKQUOTE|HR)$/.test(el.tagName))
                        problems.push(`${el.tagName} from ${source}`);
                    for (const a of el.attributes)
                        if (!(allowed[el.tagName] || []).includes(a.name)) problems.push(`${a.name} from ${source}`);
                    if (el.tagName === 'A' && !/^https?:\\/\\//.test(el.getAttribute('href')))
                        problems.push(`href ${el.getAttribute('href')}`);
                }
                if (box.content.textContent.includes('alert(1)') !== source.includes('alert(1)'))
                    problems.push(`text lost from ${source}`);
            }
            return problems;
        }""",
        attempts,
    )
    assert found == []


def test_with_a_key_the_page_asks_for_it_once(keyed, page):
    page.goto(keyed.url + "/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-error")).to_contain_text("needs its API key")
    page.fill("#key", "wrong")
    page.press("#key", "Enter")
    expect(page.locator("#key-error")).to_contain_text("not accepted")
    page.fill("#key", "s3cret")
    page.press("#key", "Enter")
    page.wait_for_selector("body[data-ready]")
    expect(dialog).to_be_hidden()
    expect(page.locator("#model")).to_have_text(keyed.engine.model_id)

    _send(page, "Hello with a key")
    expect(_replies(page).last).not_to_have_attribute("data-finish", "")
    assert _replies(page).last.get_attribute("data-finish") != "error"
    # Kept for the tab (a reload does not ask again), never on disk.
    assert page.evaluate("sessionStorage.getItem('gpt2tui.apiKey')") == "s3cret"
    assert page.evaluate("localStorage.length") == 0
    page.reload()
    page.wait_for_selector("body[data-ready]")
    expect(dialog).to_be_hidden()
    expect(page.locator("#title")).to_have_text("Hello with a key")
    expect(page.locator("#messages .message")).to_have_count(2)
