"""The detection service's own failures (bad images, overload, deadlines) as the shared problem types.

Rendering is `services.contracts.http`'s, the one renderer every service uses.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.contracts.http import install_problem_handlers, render
from services.contracts.problems import Problem

from .batcher import DeadlineExceeded, QueueFull, ShuttingDown
from .pipeline import InvalidImage


class BodyTooLarge(Problem):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "Content too large", f"the body is over {limit} bytes", type_="content-too-large")


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


def status_of(exc: Exception) -> int:
    """The HTTP status the handlers below answer an exception with (for metrics)."""
    if isinstance(exc, Problem):
        return exc.status
    if isinstance(exc, InvalidImage):
        return exc.error.status
    if isinstance(exc, (QueueFull, ShuttingDown)):
        return 503
    if isinstance(exc, DeadlineExceeded):
        return 504
    return 500


def as_problem(exc: Exception, retry_after_s: int) -> Problem:
    """The problem a detection failure is answered with."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, InvalidImage):
        err = exc.error
        return Problem(err.status, err.title, f"images[{exc.index}]: {err}", type_=err.slug)
    if isinstance(exc, QueueFull):
        return Problem(503, "Service overloaded", f"{exc}; retry later", type_="overloaded", headers=retry)
    if isinstance(exc, ShuttingDown):
        return Problem(503, "Service unavailable", str(exc), type_="unavailable", headers=retry)
    if isinstance(exc, DeadlineExceeded):
        return Problem(504, "Detection timed out", str(exc), type_="deadline-exceeded")
    raise TypeError(f"not a detection failure: {type(exc).__name__}")


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    install_problem_handlers(app)

    async def _detection_failure(request: Request, exc: Exception) -> JSONResponse:
        return render(as_problem(exc, retry_after_s), request.url.path)

    for kind in (InvalidImage, QueueFull, ShuttingDown, DeadlineExceeded):
        app.add_exception_handler(kind, _detection_failure)
