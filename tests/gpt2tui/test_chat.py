"""Chat templates (pinned literally), the context-window policy, and the ChatSession the app talks to."""

import threading
import time

import pytest
import torch

from gpt2tui import GPT2, GPT2Config, Tokenizer, save_checkpoint
from gpt2tui.chat import (
    ALPACA_PREAMBLE,
    TEMPLATES,
    ChatError,
    ChatTemplate,
    EmptyMessageError,
    build_prompt,
    encode_conversation,
    format_instruction,
    prompt_budget,
    template_for,
)
from gpt2tui.errors import ConfigError
from gpt2tui.generate import Stream
from gpt2tui.session import ChatSession, ChatSettings

ALPACA, PLAIN = TEMPLATES["alpaca"], TEMPLATES["plain"]
PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
# Pinned settings: sampled, no top-k/top-p/penalty, so the tests see the raw model and replies run to max_new_tokens.
RAW = ChatSettings(temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0, max_new_tokens=12, seed=0)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2(GPT2Config(context_length=128, emb_dim=64, n_heads=4, n_layers=2)).eval()
    with torch.no_grad():  # a wide init spreads the logits: varied tokens, no near-ties
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return m


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


# -- templates -----------------------------------------------------------------------------------------------------


def test_format_instruction_is_the_seed_format_exactly():
    assert ALPACA_PREAMBLE == PREAMBLE
    assert format_instruction("Name a colour.") == (
        f"{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\n"
    )
    assert format_instruction("Translate to French.", "Good morning") == (
        f"{PREAMBLE}\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n"
    )
    assert format_instruction("Translate to French.", "Good morning", "Bonjour") == (
        f"{PREAMBLE}\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\nBonjour"
    )
    assert format_instruction("Name a colour.", "", "Blue") == (
        f"{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue"
    )


def test_alpaca_multi_turn_and_system_prompt():
    conversation = [user("Hi"), bot("Hello!"), user("Add 2 and {x}.")]
    assert ALPACA.render(conversation) == (
        f"{PREAMBLE}\n\n### Instruction:\nHi\n\n### Response:\nHello!"
        "\n\n### Instruction:\nAdd 2 and {x}.\n\n### Response:\n"
    )
    system = [{"role": "system", "content": "You are terse."}, *conversation]
    assert ALPACA.render(system) == (
        "You are terse.\n\n### Instruction:\nHi\n\n### Response:\nHello!"
        "\n\n### Instruction:\nAdd 2 and {x}.\n\n### Response:\n"
    )
    assert "\n### Instruction:" in ALPACA.stop


def test_plain_transcript():
    conversation = [user("Hi"), bot("Hello!"), user("How are you?")]
    assert PLAIN.render(conversation) == (
        "A conversation between a user and a helpful assistant.\n\n"
        "User: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    )
    assert PLAIN.render([{"role": "system", "content": "Be kind."}, user("Hi")]) == "Be kind.\n\nUser: Hi\nAssistant:"
    assert "\nUser:" in PLAIN.stop


def test_template_for_picks_from_config_and_defaults_to_plain(hf_small_dir):
    assert template_for(None) is PLAIN
    assert template_for({"model_type": "gpt2", "n_embd": 64}) is PLAIN  # official / Hugging Face base weights
    assert template_for({"emb_dim": 64, "chat_template": None}) is PLAIN
    assert template_for({"emb_dim": 64, "chat_template": "alpaca"}) is ALPACA
    assert template_for("alpaca") is ALPACA
    assert template_for(ALPACA) is ALPACA

    class Model:
        chat_template = "alpaca"

    assert template_for(Model()) is ALPACA
    custom = template_for({"chat_template": {**PLAIN.to_dict(), "name": "mine", "user": "Q: {content}\n"}})
    assert custom.name == "mine" and custom.render([user("x")]).endswith("Q: x\nAssistant:")


def test_unknown_template_names_the_known_ones():
    with pytest.raises(ConfigError) as e:
        template_for({"chat_template": "chatml"})
    assert str(e.value) == "unknown chat template 'chatml'; known templates: alpaca, plain"
    with pytest.raises(ConfigError, match="exactly once"):
        ChatTemplate.from_dict({**PLAIN.to_dict(), "user": "no placeholder"})


@pytest.mark.parametrize(
    "messages, match",
    [
        ([bot("Hi")], "message 0 is a assistant message where a user"),
        ([user("a"), user("b")], "message 1 is a user message"),
        ([user("a"), {"role": "system", "content": "s"}], "only the first"),
        ([{"role": "tool", "content": "x"}], "role 'tool'"),
    ],
)
def test_conversation_shape_is_checked(messages, match):
    with pytest.raises(ChatError, match=match):
        ALPACA.render(messages)


# -- tokens --------------------------------------------------------------------------------------------------------


def test_training_ids_are_the_chat_prompt_then_the_reply(tok):
    conversation = [user("What is 2+2?"), bot("4."), user("And 3+3?"), bot("6, of course.")]
    ids, learn = encode_conversation(tok, conversation, "alpaca")
    prompt = build_prompt(tok, ALPACA, conversation[:3], context_length=1024, max_new_tokens=64).ids
    reply = tok.encode_ordinary("6, of course.")
    assert ids == prompt + reply + [tok.eot_token]  # what the model saw at chat time, then what it should say
    # The model learns both replies and the final <|endoftext|>, nothing of the prompts.
    first = build_prompt(tok, ALPACA, conversation[:1], context_length=1024, max_new_tokens=64).ids
    n4 = len(tok.encode_ordinary("4."))
    assert learn[: len(first)] == [False] * len(first) and learn[len(first) : len(first) + n4] == [True] * n4
    assert learn[len(prompt) :] == [True] * (len(reply) + 1) and sum(learn) == n4 + len(reply) + 1
    # A seed record: the same ids as encoding the seed's whole text, then <|endoftext|>.
    ids, _ = encode_conversation(tok, ALPACA.instruction_messages("Translate.", "Hello", "Bonjour"))
    assert ids == tok.encode(format_instruction("Translate.", "Hello", "Bonjour")) + [tok.eot_token]
    # A user's literal "<|endoftext|>" is text, not the special token.
    ids, _ = encode_conversation(tok, [user("<|endoftext|>")])
    assert tok.eot_token not in ids


# -- the context window ----------------------------------------------------------------------------------------------


def _long_conversation(n_turns):
    out = []
    for i in range(n_turns):
        out += [user(f"Question number {i} about the weather today?"), bot(f"Answer {i}: it is sunny and warm.")]
    return out + [user("Last question?")]


def test_oldest_turns_go_first_and_the_system_prompt_stays(tok):
    system = {"role": "system", "content": "You are a weather bot."}
    conversation = [system, *_long_conversation(8)]
    whole = build_prompt(tok, ALPACA, conversation, context_length=4096, max_new_tokens=64)
    assert whole.turns_dropped == 0 and not whole.message_cut
    p = build_prompt(tok, ALPACA, conversation, context_length=160, max_new_tokens=40)
    assert p.budget == 120 and len(p.ids) <= 120
    assert 0 < p.turns_dropped < 8
    kept = [system, *conversation[1 + 2 * p.turns_dropped :]]
    assert p.ids == build_prompt(tok, ALPACA, kept, context_length=4096, max_new_tokens=64).ids
    assert p.ids[: len(tok.encode("You are a weather bot."))] == tok.encode("You are a weather bot.")
    # One more turn would not have fitted.
    more = [system, *conversation[1 + 2 * (p.turns_dropped - 1) :]]
    assert len(build_prompt(tok, ALPACA, more, context_length=4096, max_new_tokens=64).ids) > 120


def test_a_last_message_too_long_alone_is_cut_from_the_left(tok):
    message = " ".join(f"w{i}" for i in range(300)) + " THE END"
    p = build_prompt(tok, ALPACA, [user("old"), bot("reply"), user(message)], context_length=128, max_new_tokens=28)
    assert p.turns_dropped == 1 and p.message_cut and len(p.ids) == p.budget == 100
    after = tok.encode_ordinary("\n\n### Response:\n")
    assert p.ids[-len(after) :] == after
    assert tok.decode(p.ids[: len(tok.encode(PREAMBLE))]) == PREAMBLE  # the header stays
    assert tok.decode(p.ids).endswith("w299 THE END\n\n### Response:\n")
    full = len(tok.encode_ordinary(message))
    assert p.cut_tokens == full - (100 - len(tok.encode(PREAMBLE + "\n\n### Instruction:\n")) - len(after))


def test_a_header_larger_than_the_window_is_an_error(tok):
    system = {"role": "system", "content": "word " * 200}
    with pytest.raises(ChatError, match="shorten the system prompt or lower max new tokens"):
        build_prompt(tok, ALPACA, [system, user("hi")], context_length=128, max_new_tokens=28)


def test_prompt_budget_follows_generate():
    assert prompt_budget(1024, 256) == 768
    assert prompt_budget(1024, 1000) == 512  # a long reply request shortens the reply, not the conversation
    assert prompt_budget(1, 5) == 1


# -- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=True), dict(top_k=-1),
        dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5), dict(repetition_penalty=0), dict(max_new_tokens=0),
        dict(max_new_tokens="64"), dict(seed=-1), dict(system_prompt=None),
    ],
)
def test_invalid_settings_are_refused(change):
    with pytest.raises(ChatError):
        ChatSettings(**change)


def test_settings_round_trip_through_a_dict():
    s = ChatSettings(system_prompt="Be brief.", temperature=0, top_k=None, seed=7)
    assert ChatSettings.from_dict(s.to_dict()) == s
    assert ChatSettings.from_dict({"temperature": 1, "from_a_newer_version": True}).temperature == 1
    assert s.replace(max_new_tokens=9).max_new_tokens == 9
    with pytest.raises(ChatError):
        s.replace(top_p=2)


# -- the session -----------------------------------------------------------------------------------------------------


def test_reply_streams_deltas_that_join_to_the_stored_reply(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW)
    stream = session.reply("  Hello there!  ")
    deltas = list(stream)
    assert len(deltas) > 1 and all(deltas)
    assert stream.finish_reason == "max_tokens" and stream.text == "".join(deltas)
    assert session.messages == [
        user("Hello there!"),
        {"role": "assistant", "content": "".join(deltas), "finish_reason": "max_tokens"},
    ]
    stats = session.last_stats
    assert stats is stream.stats and stats.new_tokens == 12 and stats.finish_reason == "max_tokens"
    assert stats.prompt_tokens == len(tok.encode(format_instruction("Hello there!")))
    assert stats.context_used == stats.prompt_tokens + 12 and stats.context_length == 128
    assert stats.time_to_first_token is not None and stats.tokens_per_s and stats.tokens_per_s > 0
    assert not session.busy


def test_settings_reach_generation(model, tok):
    replies = {}
    for seed in (1, 1, 2):
        s = ChatSession(model, tok, "alpaca", RAW.replace(seed=seed))
        replies.setdefault(seed, []).append("".join(s.reply("Tell me something")))
    assert replies[1][0] == replies[1][1] != replies[2][0]

    session = ChatSession(model, tok, "alpaca", RAW)
    session.settings = session.settings.replace(max_new_tokens=3)
    stream = session.reply("Short, please")
    list(stream)
    assert stream.stats.new_tokens == 3 and stream.finish_reason == "max_tokens"

    # Greedy with a system prompt: the same as streaming the rendered conversation ourselves.
    settings = RAW.replace(temperature=0, system_prompt="You are a poet.", max_new_tokens=8)
    session = ChatSession(model, tok, "alpaca", settings)
    got = "".join(session.reply("Write a line"))
    prompt = tok.encode(ALPACA.render([{"role": "system", "content": "You are a poet."}, user("Write a line")]))
    want = "".join(Stream(model, tok, prompt, settings.sampling(ALPACA.stop))).strip()
    assert got == want


def test_an_empty_message_is_refused_and_changes_nothing(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW)
    for text in ("", "   \n\t "):
        with pytest.raises(EmptyMessageError):
            session.reply(text)
    assert session.messages == [] and not session.busy


def test_cancel_from_another_thread_keeps_the_partial_reply(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW.replace(max_new_tokens=100))
    stream = session.reply("Tell me a long story")
    three, go_on, deltas = threading.Event(), threading.Event(), []

    def worker():
        for delta in stream:
            deltas.append(delta)
            if len(deltas) == 3:
                three.set()
                go_on.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    assert three.wait(10)
    at_cancel = stream.new_tokens
    session.cancel()  # from this thread, while the worker sits between two tokens
    go_on.set()
    thread.join(10)
    assert not thread.is_alive()
    assert stream.finish_reason == "cancelled" and stream.stats.new_tokens == at_cancel < 100
    assert len(deltas) == 3
    assert session.messages[-1] == {"role": "assistant", "content": "".join(deltas), "finish_reason": "cancelled"}
    # The next message works, and sees the partial reply in its context.
    nxt = session.reply("Go on")
    list(nxt)
    assert nxt.finish_reason in ("max_tokens", "context_full") and nxt.text and len(session.messages) == 4


def test_cancel_while_the_model_runs_stops_within_two_tokens(model, tok, monkeypatch):
    slow = model.hidden

    def hidden(*args, **kwargs):
        time.sleep(0.005)  # long enough that the cancel lands mid-token
        return slow(*args, **kwargs)

    monkeypatch.setattr(model, "hidden", hidden)
    session = ChatSession(model, tok, "alpaca", RAW.replace(max_new_tokens=100))
    stream = session.reply("Tell me a long story")
    thread = threading.Thread(target=lambda: list(stream))
    thread.start()
    deadline = time.monotonic() + 10
    while stream.new_tokens < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    at_cancel = stream.new_tokens
    session.cancel()
    thread.join(10)
    assert stream.finish_reason == "cancelled" and stream.stats.new_tokens - at_cancel <= 2


def test_a_reply_never_read_is_closed_by_the_next_message(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW)
    abandoned = session.reply("first")
    assert session.busy
    list(session.reply("second"))
    assert abandoned.finish_reason == "cancelled" and abandoned.stats.new_tokens == 0
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1] == {"role": "assistant", "content": "", "finish_reason": "cancelled"}


def test_a_second_message_while_a_reply_streams_is_refused(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW)
    stream = session.reply("first")
    next(stream)
    with pytest.raises(ChatError, match="still streaming"):
        session.reply("second")
    stream.close()  # from the consuming thread: ends it now
    assert stream.finish_reason == "cancelled" and session.messages[-1]["finish_reason"] == "cancelled"
    assert session.messages[-1]["content"] == stream.text


def test_regenerate_replaces_the_last_reply(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW.replace(seed=None))
    with pytest.raises(ChatError, match="no message"):
        session.regenerate()
    list(session.reply("Hi"))
    session.settings = session.settings.replace(seed=3)
    second = "".join(session.regenerate())
    assert len(session.messages) == 2 and session.messages[-1]["content"] == second
    third = "".join(session.regenerate())
    assert third == second and session.messages[-1]["content"] == third  # the same seed repeats


def test_long_conversations_drop_old_turns_and_say_so(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW.replace(max_new_tokens=20))
    for i in range(6):
        list(session.reply(f"Message number {i}, with a few more words in it."))
    stats = session.last_stats
    assert stats.turns_dropped > 0 and stats.context_used <= 128 and len(session.messages) == 12
    list(session.reply("word " * 300))
    assert session.last_stats.cut_tokens > 0
    assert session.messages[-2]["content"] == ("word " * 300).strip()  # the stored message is whole


def test_messages_are_checked_when_restored(model, tok):
    session = ChatSession(model, tok, "alpaca", RAW)
    session.set_messages([user("a"), {"role": "assistant", "content": "b", "finish_reason": "eos"}])
    assert len(session.messages) == 2
    with pytest.raises(ChatError, match="settings.system_prompt"):
        session.set_messages([{"role": "system", "content": "s"}, user("a")])
    with pytest.raises(ChatError):
        session.set_messages([bot("b")])


def test_load_uses_the_template_the_checkpoint_names(model, tmp_path, hf_small_dir):
    save_checkpoint(model, tmp_path / "bot", chat_template="alpaca")
    session = ChatSession.load(str(tmp_path / "bot"), device="cpu")
    assert session.template is ALPACA and session.model_name == str(tmp_path / "bot")
    assert session.info()["template"] == "alpaca" and session.info()["context_length"] == 128
    assert ChatSession.load(str(hf_small_dir), device="cpu").template is PLAIN
