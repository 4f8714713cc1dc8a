"""`create_app(engine, settings)`: the FastAPI app. One router per area (`openai_routes`, `ops_routes`, the chat page's
`page_routes` and its conversations' `history_routes`), the error handlers, and the middleware, outermost first:

    RequestCounter  counts every answer, 401s and 413s included
    CORS            only with --cors-origin: answers browsers' preflight requests, which carry no key
    BearerAuth      only with --api-key: 401 on every route without the key (but the page's own files)
    BodyLimit       413 for a body over the limit, before anything parses it

The scheduler thread starts with the app and stops after uvicorn's graceful shutdown has let streams finish.
"""

from __future__ import annotations

import asyncio
import collections
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from . import errors, history_routes, openai_routes, ops_routes, page_routes
from .engine import Engine
from .middleware import BearerAuth, BodyLimit, RequestCounter
from .settings import ServeSettings


def create_app(engine: Engine, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)  # rows still running end as cancelled; their streams close
            app.state.history.close()

    # No /docs or /redoc: their pages load scripts from a CDN. The schema stays at /openapi.json.
    app = FastAPI(title="gpt2tui", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.settings = settings
    app.state.request_counts = collections.Counter()
    errors.install(app)
    app.include_router(openai_routes.router)
    app.include_router(ops_routes.router)
    history_routes.install(app, settings)
    page_routes.install(app)
    # add_middleware wraps what is there: the last added is the outermost.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestCounter, counts=app.state.request_counts)
    return app
