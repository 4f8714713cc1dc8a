"""Every error the server answers, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Wrong types, missing fields and unparsable JSON are 400s (FastAPI would say 422; OpenAI's clients expect 400), with
one message that names the field and what it should be.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorDetail, ErrorResponse

log = logging.getLogger("gpt2tui.serve")

# pydantic's names for the members of a union, which appear in an error's location but are not fields.
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def _param(loc: tuple) -> str | None:
    parts = [
        str(p) for p in loc[1:] if isinstance(p, int) or ("[" not in str(p) and str(p) not in _TYPE_TAGS)
    ]
    return ".".join(parts) or None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line for the first problem of a request body, and the field it concerns."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    kind = first.get("type", "")
    param = _param(loc)
    if kind == "json_invalid":
        return (
            f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
            None,
        )
    if kind == "missing" and param is None:
        return "the request needs a JSON body", None
    if kind == "missing":
        return f"{param}: this field is required", param
    what = first.get("msg", "invalid value")
    return f"{param or 'body'}: {what}; got {_shown(first.get('input'))}", param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = (
                f"no route {request.url.path}; the API is under /v1 (/v1/models, /v1/completions, "
                "/v1/chat/completions)"
            )
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, code=str(exc.status_code), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error while serving %s", request.url.path)
        return error_response(500, f"the server failed: {type(exc).__name__}: {exc}", type="server_error")
