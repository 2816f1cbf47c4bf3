"""The one RFC 9457 renderer: `Problem` and the framework's own errors as ``application/problem+json``.

Both HTTP services (gateway, detection) install these handlers, so every error body has one shape and one
`type` scheme. Needs starlette/FastAPI (the gateway and detection extras), never torch.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from services.contracts.problems import PROBLEM_JSON, Problem, describe, field_errors

log = logging.getLogger(__name__)

_HTTP_TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 406: "Not acceptable",
                413: "Content too large", 415: "Unsupported media type"}


def render(problem: Problem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(problem.body(instance), status_code=problem.status, media_type=PROBLEM_JSON,
                        headers=problem.headers or None)


def problem_response(status: int, title: str, detail: str = "", *, type_: str | None = None,
                     instance: str | None = None, headers: dict[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    """Render a problem without raising it (ASGI middleware that answers before any route runs)."""
    return render(Problem(status, title, detail, type_=type_, headers=headers, **extra), instance)


async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return render(exc, request.url.path)


async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = field_errors(exc.errors())
    return render(Problem(422, "Invalid request", describe(errors), type_="validation-error", errors=errors),
                  request.url.path)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    title = _HTTP_TITLES.get(exc.status_code, "HTTP error")
    detail = "" if exc.detail == title else str(exc.detail)
    return render(Problem(exc.status_code, title, detail, headers=getattr(exc, "headers", None)),
                  request.url.path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return render(Problem(500, "Internal error", "an unexpected error occurred; it has been logged",
                          type_="internal-error"), request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    """Problem, request validation, HTTP errors and anything unexpected, all as problem+json."""
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
