"""Driving the chat app through Textual's Pilot: wait for the model, send a prompt, wait for the reply."""

from __future__ import annotations

import asyncio
import time

MODEL_NAME = "tiny"  # the name the TUI tests' app shows for its model (tests/tui/conftest.py)


def run(coro):
    """Tests are plain functions: each drives its app inside its own event loop."""
    return asyncio.run(coro)


async def wait_until(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def loaded(pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.chat is not None and pilot.app.chat.session is not None, what="the model")
    await pilot.pause()


async def reply_done(pilot) -> None:
    await pilot.pause()
    await wait_until(pilot, lambda: pilot.app.chat.reply is None, what="the reply to end")
    await pilot.pause()


async def send(pilot, text: str) -> None:
    pilot.app.chat.query_one("#prompt").focus()
    pilot.app.chat.query_one("#prompt").insert(text)
    await pilot.press("enter")
