"""Typed errors and the one place that turns them into RFC 9457 ``application/problem+json`` responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import DeadlineExceeded, QueueFull, ShuttingDown
from .decode import ImageDecodeError
from .pipeline import InvalidImage

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str | None = None,
                 errors: list[dict] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.errors, self.headers = errors, headers


class BodyTooLarge(ProblemError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "request-too-large", "Request too large", f"the body is over {limit} bytes")


class BodyLimit:
    """ASGI middleware: a body longer than ``limit`` bytes fails while it is read, Content-Length or not."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited_receive, send)


def problem(status: int, slug: str, title: str, detail: str | None = None, errors: list[dict] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": f"urn:detbooth:problem:{slug}", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_of(exc: Exception) -> int:
    """The HTTP status the handlers below answer an exception with (for metrics)."""
    if isinstance(exc, ProblemError):
        return exc.status
    if isinstance(exc, InvalidImage):
        return exc.error.status
    if isinstance(exc, ImageDecodeError):
        return exc.status
    if isinstance(exc, (QueueFull, ShuttingDown)):
        return 503
    if isinstance(exc, DeadlineExceeded):
        return 504
    return 500


def validation_errors(exc: ValidationError | RequestValidationError, prefix: tuple = ()) -> list[dict]:
    raw = exc.errors(include_url=False, include_context=False) if isinstance(exc, ValidationError) else exc.errors()
    return [{"loc": [*prefix, *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")} for e in raw]


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    retry = {"Retry-After": str(retry_after_s)}

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError):
        return problem(exc.status, exc.slug, exc.title, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(InvalidImage)
    async def _invalid_image(_: Request, exc: InvalidImage):
        err = exc.error
        return problem(err.status, err.slug, err.title, f"images[{exc.index}]: {err}")

    @app.exception_handler(ImageDecodeError)
    async def _request_images(_: Request, exc: ImageDecodeError):  # about the request as a whole (e.g. its pages)
        return problem(exc.status, exc.slug, exc.title, str(exc))

    @app.exception_handler(QueueFull)
    async def _queue_full(_: Request, exc: QueueFull):
        return problem(503, "overloaded", "Service overloaded", f"{exc}; retry later", headers=retry)

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(_: Request, exc: ShuttingDown):
        return problem(503, "unavailable", "Service unavailable", str(exc), headers=retry)

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(_: Request, exc: DeadlineExceeded):
        return problem(504, "deadline-exceeded", "Detection timed out", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError):
        return problem(422, "validation-error", "Invalid request", "the request has invalid fields",
                       validation_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return problem(exc.status_code, f"http-{exc.status_code}", str(exc.detail), None,
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return problem(500, "internal-error", "Internal error", f"{type(exc).__name__}")
