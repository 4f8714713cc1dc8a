"""The chat page at `/`: one HTML file, a stylesheet and a script, shipped in the package (`static/`), with no CDN and
no build step. The page talks to `/v1/chat/completions` and `/api/conversations` like any other client.

The page's own files are the only thing the server gives out without the API key (`middleware.public`): a
browser cannot send a header when it opens a page, and the files hold no data; the page then asks for the key.

The Content-Security-Policy is the second wall against model output turned into HTML (the first is the page's own
renderer, which escapes everything): no inline script, no script or style from elsewhere, requests to this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new gpt2tui's page replaces the old one at the next load
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def install(app) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
