"""`gpt2tui serve` as a user starts it: a real process, the warning when exposed without a key, and a graceful
SIGTERM that lets the reply in flight finish."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

from gpt2tui.cli import main
from gpt2tui_testkit import ROOT, child_env, free_port


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read()}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not come up")


def test_serve_warns_when_exposed_and_finishes_streams_on_sigterm(long_dir, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt2tui.cli",
            "serve",
            "--model",
            str(long_dir),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--max-batch",
            "4",
        ],
        cwd=ROOT,
        env=child_env(drop=("GPT2TUI_API_KEY",), XDG_DATA_HOME=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, process)
        client = OpenAI(base_url=url + "/v1", api_key="-")
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=600,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = iter(stream)
        first = next(chunks)
        process.send_signal(signal.SIGTERM)  # graceful: the reply in flight still ends normally
        rest = list(chunks)
        assert first.choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
        assert rest[-1].usage.completion_tokens == 600
        # uvicorn ends by re-raising the signal once shut down, so the parent sees how the process ended.
        assert process.wait(timeout=60) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = process.stderr.read()
    assert "without --api-key" in err
    assert "Finished server process" in err and "Traceback" not in err


def test_bad_port_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "70000"])
    assert e.value.code == 2
    assert "not a port" in capsys.readouterr().err


def test_missing_serve_extra_is_one_clear_line(tiny_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "gpt2tui.serve.server", raising=False)
    assert main(["serve", "--model", str(tiny_dir)]) == 1
    err = capsys.readouterr().err
    assert "pip install 'gpt2tui[serve]'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "missing,says",
    [("uvicorn", "needs the serve extra (uvicorn is not installed)"), ("gpt2tui.serve.server", "incomplete")],
)
def test_a_missing_module_is_named_as_a_missing_extra_or_a_stale_install(monkeypatch, capsys, missing, says):
    monkeypatch.delitem(sys.modules, "gpt2tui.serve.server")  # imported again by the command
    monkeypatch.setitem(sys.modules, missing, None)  # importing it now raises ImportError naming it
    assert main(["serve", "--model", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
