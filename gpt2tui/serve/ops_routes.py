"""`GET /health` and Prometheus' text format at `GET /metrics`: requests, queue depth, running rows, tokens/s."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .engine import Engine
from .schemas import Health

router = APIRouter()


@router.get("/health", response_model=Health)
async def health(request: Request) -> JSONResponse:
    """200 while the scheduler thread runs; 503 once it has stopped (shutting down, or died)."""
    engine: Engine = request.app.state.engine
    scheduler = engine.scheduler
    ok = engine.alive
    body = Health(
        status="ok" if ok else "unavailable",
        model=engine.model_id,
        running=scheduler.running,
        waiting=scheduler.queue_depth,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(engine: Engine, requests: dict[tuple[str, int], int]) -> str:
    s = engine.scheduler
    m = s.metrics
    lines: list[str] = []

    def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP gpt2tui_{name} {help}")
        lines.append(f"# TYPE gpt2tui_{name} {kind}")
        lines.extend(f"gpt2tui_{name}{labels} {value:g}" for labels, value in samples)

    metric(
        "requests_total",
        "counter",
        "HTTP requests answered, by route and status code.",
        [
            (f'{{route="{_label(route)}",status="{status}"}}', n)
            for (route, status), n in sorted(requests.items())
        ],
    )
    metric("queue_depth", "gauge", "Rows waiting for a free batch row.", [("", s.queue_depth)])
    metric("running_rows", "gauge", "Rows in the batch (prefilling or decoding).", [("", s.running)])
    metric("max_batch", "gauge", "Rows the batch holds (--max-batch).", [("", s.max_batch)])
    metric("max_queue", "gauge", "Rows the queue holds (--max-queue).", [("", s.max_queue)])
    metric(
        "rejected_requests_total",
        "counter",
        "Requests refused with 429 because the queue was full.",
        [("", m.rejected)],
    )
    metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [("", m.prompt_tokens)])
    metric("generation_tokens_total", "counter", "Tokens generated.", [("", m.generated_tokens)])
    metric(
        "tokens_per_second",
        "gauge",
        "Tokens generated per second over the last 10 seconds.",
        [("", round(m.tokens_per_second(), 3))],
    )
    metric(
        "rows_finished_total",
        "counter",
        "Rows that ended, by reason.",
        [(f'{{reason="{_label(r)}"}}', n) for r, n in sorted(m.rows_finished.items())],
    )
    metric("scheduler_steps_total", "counter", "Batched forward steps run.", [("", m.steps)])
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    text = render_metrics(request.app.state.engine, request.app.state.request_counts)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
