"""Live numbers: tokens/s while a reply streams, token counts under each message, the context bar, and the warnings
about the oldest turns leaving the prompt (with the grammar right)."""

from gpt2tui.chat import Prompt, turns_left_out
from gpt2tui.session import ChatSession
from gpt2tui.store import ChatStore
from gpt2tui.tui.numbers import message_numbers, near_full_warning
from gpt2tui.tui.screens import chat as chat_screen
from gpt2tui.tui.screens.chat import ChatScreen, context_notice
from gpt2tui.tui.widgets import MessageView, StatusBar
from gpt2tui.tui.widgets.status_bar import context_bar
from gpt2tui_testkit.tui import loaded, reply_done, run, send, wait_until


def numbers_of(view: MessageView) -> str:
    return str(view.query_one(".numbers").render())


def test_the_grammar_of_turns_left_out():
    assert turns_left_out(0) == ""
    assert turns_left_out(1) == "the oldest turn was left out"
    assert turns_left_out(3) == "the 3 oldest turns were left out"
    one = context_notice(Prompt(ids=[1], turns_dropped=1, cut_tokens=0, budget=10), 512)
    assert one == "the oldest turn was left out to fit the 512-token window"
    both = context_notice(Prompt(ids=[1], turns_dropped=2, cut_tokens=5, budget=10), 512)
    assert both.startswith("the 2 oldest turns were left out") and "first 5 tokens were cut" in both


def test_message_numbers_and_the_bar():
    assert message_numbers("user", 1) == "1 token"
    assert message_numbers("user", 1200) == "1,200 tokens"
    assert message_numbers("assistant", 45, 120, 23.14) == "reply 45 tokens · prompt 120 · 23.1 tok/s"
    assert message_numbers("assistant", 45) == "reply 45 tokens"
    assert context_bar(0, 512).plain == " " * 10
    assert context_bar(256, 512).plain == "█████     "
    assert context_bar(900, 512).plain == "█" * 10  # a full window, never more
    assert near_full_warning(100, 400) == ""
    assert "the oldest turns will be left out" in near_full_warning(350, 400)


def test_tokens_per_second_show_while_the_reply_streams(make_app, monkeypatch):
    monkeypatch.setattr(chat_screen, "SHOW_INTERVAL", 0.0)
    app = make_app(max_new_tokens=300)
    seen = []  # (tokens/s, context used, the reply's numbers) while the reply was still streaming

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            status = app.chat.query_one(StatusBar)
            assert "– tok/s" in str(status.query_one("#model-info").render())
            await send(pilot, "Tell me a long story")

            def streaming_with_a_rate() -> bool:
                if app.chat.reply is not None and status.tokens_per_s is not None:
                    seen.append((status.tokens_per_s, status.context_used, numbers_of(app.chat.reply_view)))
                return bool(seen)

            await wait_until(pilot, streaming_with_a_rate, what="a live rate")
            rate, used, numbers = seen[0]
            assert rate > 0 and "tok/s" in str(status.query_one("#model-info").render())
            assert used > len(app.chat.reply.prompt.ids)  # the window fills as the reply grows
            assert numbers.startswith("reply ") and "tok/s" in numbers
            await pilot.press("escape")
            await reply_done(pilot)
            stats = app.session.last_stats
            user, bot = app.chat.query_one("#messages").views
            assert status.tokens_per_s == stats.tokens_per_s
            prompt_tokens = app.session.tokenizer.encode_ordinary("Tell me a long story")
            assert numbers_of(user) == f"{len(prompt_tokens)} tokens"
            assert numbers_of(bot).startswith(
                f"reply {stats.new_tokens} tokens · prompt {stats.prompt_tokens}"
            )

    run(body())


def test_counts_of_a_saved_conversation_and_the_context_bar(make_app):
    with ChatStore() as store:
        c = store.create("Apples", model="tiny")
        store.append_message(c.id, "user", "Tell me about apples")
        store.append_message(c.id, "assistant", "Apples are pome fruit.", "eos")
    app = make_app()

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            user, bot = app.chat.query_one("#messages").views
            encode = app.session.tokenizer.encode_ordinary
            assert numbers_of(user) == f"{len(encode('Tell me about apples'))} tokens"
            assert numbers_of(bot).startswith(
                f"reply {len(encode('Apples are pome fruit.'))} tokens · prompt "
            )
            info = str(app.chat.query_one(StatusBar).query_one("#model-info").render())
            used = app.chat.query_one(StatusBar).context_used
            assert f"ctx {context_bar(used, 512).plain} {used}/512" in info

    run(body())


def test_a_warning_before_the_oldest_turns_drop_out_then_the_notice_when_they_do(make_app):
    # A 512-token window and 64-token replies: a prompt may take 448 tokens.
    with ChatStore() as store:
        c = store.create("Long", model="tiny")
        for i in range(10):
            store.append_message(c.id, "user", f"Question {i}: " + "words " * 12)
            store.append_message(c.id, "assistant", f"Answer {i}: " + "more " * 12, "eos")
    app = make_app(max_new_tokens=64)

    async def body():
        async with app.run_test(size=(120, 40)) as pilot:
            await loaded(pilot)
            notes = [n.message for n in app._notifications]
            assert any("the oldest turns will be left out" in m for m in notes), notes
            await send(pilot, "And one more " + "word " * 40)
            await reply_done(pilot)
            notice = str(app.chat.query_one("#messages").views[-1].query_one(".notice").render())
            dropped = app.session.last_stats.turns_dropped
            assert dropped >= 1
            assert notice.startswith(turns_left_out(dropped))
            assert isinstance(app.screen, ChatScreen)

    run(body())


def test_enter_pressed_while_the_model_loads_is_refused_not_sent_later(make_app, tiny_model, tokenizer):
    import threading

    release = threading.Event()

    def slow_loader():
        release.wait(20)
        return ChatSession(tiny_model, tokenizer, model_name="tiny")

    app = make_app(loader=slow_loader, max_new_tokens=3)

    async def body():
        async with app.run_test(size=(100, 30)) as pilot:
            await send(pilot, "Hello while loading")
            await pilot.pause()
            assert any("still loading: nothing was sent" in n.message for n in app._notifications)
            # A key pressed before the model was ready but handled after: refused too, not queued and sent.
            box = app.chat.query_one("#prompt")
            early = box.Submitted(box, box.text, pressed_at=0.0)
            release.set()
            await loaded(pilot)
            app.chat.post_message(early)
            await pilot.pause()
            assert app.chat.query_one("#messages").views == [] and app.session.messages == []
            assert box.text == "Hello while loading"  # kept, to send with Enter now
            await pilot.press("enter")
            await reply_done(pilot)
            assert [v.role for v in app.chat.query_one("#messages").views] == ["user", "assistant"]

    run(body())
