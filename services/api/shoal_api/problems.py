"""Every error as ``application/problem+json`` (RFC 9457) with a stable ``type`` per kind.

Routes raise ``HTTPException(status, {"message": ..., **extra})``; the handlers here turn
it into ``{type, title, status, detail, **extra}``. ``extra`` keeps ``problems`` (a list of
``{path, message}``) for invalid input and ``state`` for refusals by run state. A route
names a kind with ``"type": "<kind>"`` in its detail; otherwise the status decides.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("shoal.api")

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:shoal:problem:"

_KIND_BY_STATUS = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
    405: "method-not-allowed", 406: "not-acceptable", 409: "state-conflict",
    413: "too-large", 415: "unsupported-media-type", 422: "invalid-request",
    503: "unavailable",
}


class ProblemItem(BaseModel):
    path: str
    message: str


class ProblemDetail(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    problems: list[ProblemItem] | None = None


# Declared on every route so the OpenAPI document describes the errors it can answer.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemDetail, "content": {MEDIA_TYPE: {}},
           "description": HTTPStatus(code).phrase}
    for code in (400, 401, 403, 404, 409, 413, 422, 503)
}


def problem(status: int, detail: str, kind: str | None = None, **extra: Any) -> JSONResponse:
    body = {"type": TYPE_PREFIX + (kind or _KIND_BY_STATUS.get(status, "error")),
            "title": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_
            else "Error",
            "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    extra: dict[str, Any] = {}
    kind = None
    if isinstance(exc.detail, dict):
        extra = dict(exc.detail)
        message = str(extra.pop("message", ""))
        kind = extra.pop("type", None)
    else:
        message = str(exc.detail)
    response = problem(exc.status_code, message, kind, **extra)
    for k, v in (exc.headers or {}).items():
        response.headers[k] = v
    return response


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [{"path": _loc(e.get("loc", ())), "message": str(e.get("msg", ""))}
                for e in exc.errors()]
    return problem(422, "; ".join(f"{p['path']}: {p['message']}" for p in problems),
                   "invalid-request", problems=problems)


async def _data(_: Request, exc: Exception) -> JSONResponse:
    # Postgres refused a value the request carried (a NUL character, an out-of-range
    # number): the request is at fault, and nothing was written.
    return problem(422, f"a value of the request cannot be stored: {exc}", "invalid-request")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error: %r", exc, exc_info=exc)
    return problem(500, "internal error; the service log has the details", "internal")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(asyncpg.DataError, _data)
    app.add_exception_handler(Exception, _unexpected)
