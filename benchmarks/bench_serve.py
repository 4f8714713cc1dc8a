"""Serving throughput on the CPU, loopback only: `gpt2tui serve` (continuous batching) at 1, 4 and 16 concurrent
streaming clients, beside `transformers`' text-generation pipeline served the naive way (one request at a time
behind a lock, the whole reply in one response), on 124M-shaped random weights and on a tiny model.

Every case sends the same 16 requests (a 32-token prompt each, greedy, a fixed number of new tokens); "1 client" is
those requests one after another. Figures per case, in `extra_info`: aggregate tokens/s over the wall time of all 16,
and p50/p99 of the time to first token (TTFT: for the naive server, to the whole reply) and of the time per output
token after the first (TPOT). The servers run in processes of their own, as a user starts them, so the clients' work
in this process does not share the servers' interpreter; on a two-core machine the clients still take some CPU from
them, which is why they are aiohttp's (its C parser costs a third of httpx's CPU per streamed event), as in vLLM's
serving benchmark. The 1-, 4- and 16-client cases take turns, round after round, and each reports its median round,
so a machine whose speed drifts (a shared VM) moves all three alike. Bounded in time: a few minutes in all.

    .venv/bin/python -m pytest benchmarks/bench_serve.py --benchmark-only -s
"""

# No `from __future__ import annotations`: FastAPI reads the naive server's `request: Request`, imported inside the
# function, from the annotation itself.
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from gpt2tui_testkit import ROOT, child_env, free_port
from gpt2tui_testkit.hf import write_hf_dir

REQUESTS = 16
PROMPT_TOKENS = 32
NEW_TOKENS = {"124m": 32, "tiny": 64}
ROUNDS = {"124m": 3, "tiny": 7}
MODELS = {
    "124m": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, initializer_range=0.02),
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
}
RESULTS: dict[tuple[str, str], dict] = {}


def _wait_up(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


class _Server:
    def __init__(self, argv: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_up(self.url, self.process)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module", params=["tiny", "124m"])
def size(request, tmp_path_factory):
    path = write_hf_dir(
        tmp_path_factory.mktemp("serve") / f"gpt2-{request.param}-random", seed=0, **MODELS[request.param]
    )
    return request.param, path


@pytest.fixture(scope="module")
def gpt2tui_server(size):
    name, path = size
    server = _Server(
        [sys.executable, "-m", "gpt2tui.cli", "serve", "--model", str(path), "--max-batch", "16"]
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def naive_server(size):
    name, path = size
    server = _Server([sys.executable, str(Path(__file__).resolve()), "--naive-server", str(path)])
    yield server
    server.close()


def _prompts() -> list[list[int]]:
    # Distinct prompts of the same length, as token ids, so each server sees exactly the same input.
    return [[(1000 + 37 * i + j) % 50000 for j in range(PROMPT_TOKENS)] for i in range(REQUESTS)]


async def _one(
    session: aiohttp.ClientSession, url: str, prompt: list[int], new_tokens: int, stream: bool
) -> dict:
    body = {
        "prompt": prompt,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with session.post(url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        if not stream:
            tokens = (await r.json())["usage"]["completion_tokens"]
            first = last = time.perf_counter()
        else:
            async for line in r.content:  # one SSE line at a time
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["text"]:
                    last = time.perf_counter()
                    first = first or last
    return {
        "ttft": first - start,
        "tpot": (last - first) / max(tokens - 1, 1) if stream else None,
        "tokens": tokens,
    }


async def _run(url: str, clients: int, new_tokens: int, stream: bool) -> dict:
    prompts = _prompts()
    queue = list(prompts)
    results = []

    async def client_loop(session):
        while queue:
            results.append(await _one(session, url, queue.pop(0), new_tokens, stream))

    connector = aiohttp.TCPConnector(limit=0)  # no pool limit: every client keeps its own connection
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:
        await _one(session, url, prompts[0][:8], 2, stream)  # warm-up: first-call costs out of the figures
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(session) for _ in range(clients)))
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    ttft = [r["ttft"] for r in results]
    out = {
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "aggregate_tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
        "ttft_p99_ms": round(1000 * pct(ttft, 0.99), 1),
    }
    if stream:
        tpot = [r["tpot"] for r in results]
        out.update(
            tpot_p50_ms=round(1000 * statistics.median(tpot), 2), tpot_p99_ms=round(1000 * pct(tpot, 0.99), 2)
        )
    return out


def _peak_rss_mb(process: subprocess.Popen) -> float | None:
    """The server process's peak resident memory so far (Linux's VmHWM), in MB."""
    try:
        with open(f"/proc/{process.pid}/status", encoding="ascii") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None
    return round(kb / 1024, 1)


def _report(key: tuple[str, str], runs: list[dict]) -> dict:
    """The median round of a case, with every round's aggregate beside it."""
    runs = sorted(runs, key=lambda r: r["aggregate_tokens_per_s"])
    result = {**runs[len(runs) // 2], "rounds": [r["aggregate_tokens_per_s"] for r in runs]}
    RESULTS[key] = result
    print(f"\n{key[0]:>5} {key[1]:<32} {json.dumps(result)}")
    return result


def test_gpt2tui_serve(benchmark, size, gpt2tui_server):
    """1, 4 and 16 streaming clients, in turns for `ROUNDS` rounds."""
    name, _ = size
    benchmark.group = f"serve-{name}-cpu"
    counts = (1, 4, 16)
    runs: dict[int, list[dict]] = {c: [] for c in counts}

    def rounds():
        for _ in range(ROUNDS[name]):
            for c in counts:
                runs[c].append(asyncio.run(_run(gpt2tui_server.url, c, NEW_TOKENS[name], True)))

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    benchmark.extra_info["server_peak_rss_mb"] = _peak_rss_mb(gpt2tui_server.process)
    print(f"\n{name}: gpt2tui serve peak RSS {benchmark.extra_info['server_peak_rss_mb']} MB")
    for c in counts:
        benchmark.extra_info[f"{c}_clients"] = _report((name, f"gpt2tui serve, {c} clients"), runs[c])
    ratio = (
        RESULTS[(name, "gpt2tui serve, 16 clients")]["aggregate_tokens_per_s"]
        / RESULTS[(name, "gpt2tui serve, 1 clients")]["aggregate_tokens_per_s"]
    )
    benchmark.extra_info["ratio_16_to_1_client"] = round(ratio, 2)
    print(
        f"{name}: 16 clients / 1 client = {ratio:.2f}x aggregate tokens/s (medians of {ROUNDS[name]} rounds)"
    )


def test_transformers_pipeline_naive(benchmark, size, naive_server):
    """The same 16 requests from 16 clients at once: the naive server answers them one at a time."""
    name, _ = size
    benchmark.group = f"serve-{name}-cpu"
    runs: list[dict] = []
    benchmark.pedantic(
        lambda: runs.append(asyncio.run(_run(naive_server.url, 16, NEW_TOKENS[name], stream=False))),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(_report((name, "transformers pipeline, naive"), runs))
    benchmark.extra_info["server_peak_rss_mb"] = _peak_rss_mb(naive_server.process)
    print(f"{name}: naive server peak RSS {benchmark.extra_info['server_peak_rss_mb']} MB")


# -- the naive server: what a first attempt at serving a model with transformers looks like --------------------------


def _naive_server(model_dir: str, port: int) -> None:
    # Imported here: only this child process serves with them, and pytest's collection of this file stays light.
    import threading

    import anyio
    import transformers
    import uvicorn
    from fastapi import FastAPI, Request

    generator = transformers.pipeline("text-generation", model=model_dir, device="cpu")
    lock = threading.Lock()  # one request at a time: the model is not shared between calls
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def complete(request: Request):
        body = await request.json()
        n = body["max_tokens"]
        prompt = generator.tokenizer.decode(body["prompt"])

        def run():
            with lock:
                out = generator(
                    prompt,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    return_full_text=False,
                    pad_token_id=50256,
                )
            return out[0]["generated_text"]

        text = await anyio.to_thread.run_sync(run)
        return {
            "choices": [{"text": text, "index": 0, "finish_reason": "length"}],
            "usage": {
                "prompt_tokens": len(body["prompt"]),
                "completion_tokens": n,
                "total_tokens": len(body["prompt"]) + n,
            },
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--naive-server":
    _naive_server(sys.argv[2], int(sys.argv[4]))
