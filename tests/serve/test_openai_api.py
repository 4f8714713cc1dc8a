"""The OpenAI-compatible routes through the official `openai` client: shapes, streaming, usage, sampling options."""

from __future__ import annotations

import httpx
import openai
import pytest

from gpt2tui import generate, load_model
from gpt2tui.chat import build_prompt
from gpt2tui.session import ChatSession, ChatSettings

HELLO = [{"role": "user", "content": "Say hello to the harbour."}]


@pytest.fixture(scope="module")
def local(tiny_dir):
    """The same model loaded in this process: the library's own generation is the oracle."""
    return load_model(tiny_dir, device="cpu")


def test_models_lists_the_served_model(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny-gpt2"]
    assert server.client().models.retrieve("tiny-gpt2").id == "tiny-gpt2"


def test_completion_is_the_library_greedy_continuation(server, local):
    model, tokenizer = local
    r = server.client().completions.create(
        model="tiny-gpt2", prompt="The lighthouse keeper", max_tokens=12, temperature=0
    )
    expected = generate(model, tokenizer, "The lighthouse keeper", max_new_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny-gpt2"
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(tokenizer.encode("The lighthouse keeper"))
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_streamed_completion_joins_to_the_whole_one(server):
    client = server.client()
    whole = client.completions.create(model="m", prompt="Seven ships", max_tokens=20, temperature=0)
    chunks = list(
        client.completions.create(
            model="m",
            prompt="Seven ships",
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_chat_reply_is_the_chat_apps_reply(server, local):
    """The same conversation, rendered by the same template code, gives the same greedy reply as the chat app."""
    model, tokenizer = local
    session = ChatSession(
        model,
        tokenizer,
        settings=ChatSettings(
            temperature=0, top_k=None, top_p=None, repetition_penalty=1.0, max_new_tokens=16
        ),
    )
    reply = session.reply(HELLO[0]["content"])
    expected = "".join(reply)
    r = server.client().chat.completions.create(model="m", messages=HELLO, max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    prompt = build_prompt(tokenizer, session.template, HELLO, model.config.context_length, 16)
    assert r.usage.prompt_tokens == len(prompt.ids)
    assert r.usage.completion_tokens == reply.stats.new_tokens


def test_streamed_chat_joins_to_the_whole_reply_and_reports_usage(server):
    client = server.client()
    whole = client.chat.completions.create(model="m", messages=HELLO, max_completion_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=HELLO,
            max_completion_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_raw_stream_is_server_sent_events_ending_with_done(server):
    body = {"prompt": "Fog", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_stop_string_ends_the_text_before_it(server):
    client = server.client()
    full = (
        client.completions.create(model="m", prompt="The bell", max_tokens=16, temperature=0).choices[0].text
    )
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    r = client.completions.create(
        model="m", prompt="The bell", max_tokens=16, temperature=0, stop=[stop, "zzz"]
    )
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_a_seed_repeats_and_n_gives_distinct_choices(server):
    client = server.client()
    args = dict(model="m", prompt="Blue rocks", max_tokens=10, temperature=1.0, seed=7)
    a = client.completions.create(**args, n=3)
    b = client.completions.create(**args, n=3)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    assert a.usage.completion_tokens == 30  # three choices of ten tokens
    assert (
        a.usage.prompt_tokens == client.completions.create(**args).usage.prompt_tokens
    )  # the prompt counts once


def test_completion_logprobs(server):
    r = server.client().completions.create(
        model="m", prompt="Harbour", max_tokens=5, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and len(top) == 3
        assert top[token] == pytest.approx(max(top.values()))  # greedy: the sampled token is the most likely


def test_chat_logprobs(server):
    r = server.client().chat.completions.create(
        model="m", messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_penalties_change_a_looping_reply(server):
    client = server.client()
    plain = client.completions.create(model="m", prompt="The", max_tokens=24, temperature=0).choices[0].text
    penalised = (
        client.completions.create(
            model="m", prompt="The", max_tokens=24, temperature=0, frequency_penalty=2.0, presence_penalty=2.0
        )
        .choices[0]
        .text
    )
    words = plain.split()
    assert len(set(words)) < len(words), "the unpenalised greedy reply was expected to repeat itself"
    assert penalised != plain


def test_unknown_fields_are_ignored(server):
    r = server.client().completions.create(
        model="m", prompt="x", max_tokens=2, extra_body={"no_such_field": [1]}
    )
    assert r.usage.completion_tokens == 2


def test_token_id_prompts_and_prompt_lists(server, local):
    _, tokenizer = local
    ids = tokenizer.encode("Seven ships")
    client = server.client()
    by_ids = client.completions.create(model="m", prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model="m", prompt="Seven ships", max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    both = client.completions.create(
        model="m", prompt=["Seven ships", "The bell"], max_tokens=6, temperature=0
    )
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == by_text.choices[0].text


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "n": 1.5}, "n"),
        ({"max_tokens": 5}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "max_tokens": 500}, "max_tokens"),
        ({"prompt": "x", "n": 17}, "n"),
        ({"prompt": [999999]}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
    ],
)
def test_bad_completion_requests_get_400_in_openais_shape(server, body, param):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "wizard", "content": "hi"}],
        [{"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": 5}],
    ],
)
def test_bad_chat_requests_get_400(server, messages):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="m", messages=messages)
    assert e.value.status_code == 400
    assert e.value.body["param"].startswith("messages")


def test_a_prompt_longer_than_the_window_is_refused_not_cut(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="m", prompt="word " * 200, max_tokens=1)
    assert e.value.code == "context_length_exceeded"


def test_malformed_json_and_unknown_routes(server):
    r = httpx.post(
        server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v2/anything")
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("no route")


def test_health_and_metrics(server):
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    server.client().completions.create(model="m", prompt="x", max_tokens=2)
    text = httpx.get(server.url + "/metrics").text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert int(samples['gpt2tui_requests_total{route="/v1/completions",status="200"}']) >= 1
    assert float(samples["gpt2tui_generation_tokens_total"]) >= 2
    assert samples["gpt2tui_queue_depth"] == "0"
    assert "gpt2tui_tokens_per_second" in samples
