"""RFC 9457 problem details: every error the gateway returns has this shape."""

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


class Problem(Exception):
    """An error with an HTTP status; raised anywhere, rendered once by `problem_handler`."""

    def __init__(self, status: int, title: str, detail: str = "", *, type_: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.type = type_ or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


def validation_problem(e: ValidationError, prefix: tuple[str, ...] = ()) -> Problem:
    """A 422 that names each invalid field, from a pydantic ValidationError."""
    errors = [{"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in e.errors()]
    detail = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in errors)
    return Problem(422, "Invalid request", detail, type_="validation-error", errors=errors)


def problem_response(status: int, title: str, detail: str = "", *, type_: str = "about:blank",
                     instance: str | None = None, headers: dict[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _type_uri(slug: str) -> str:
    return f"https://detbooth.dev/problems/{slug}"


async def problem_handler(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc.status, exc.title, exc.detail, type_=_type_uri(exc.type),
                            instance=request.url.path, headers=exc.headers, **exc.extra)


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return problem_response(422, "Invalid request", detail, type_=_type_uri("validation-error"),
                            instance=request.url.path, errors=errors)


async def http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request", 413: "Content too large"}
    return problem_response(exc.status_code, titles.get(exc.status_code, "HTTP error"), str(exc.detail),
                            instance=request.url.path, headers=getattr(exc, "headers", None))


async def redis_down_handler(request: Request, exc: redis.RedisError) -> JSONResponse:
    log.error("job store unavailable: %s", type(exc).__name__)
    return problem_response(503, "Job store unavailable", "the job store (Redis) does not answer; retry soon",
                            type_=_type_uri("store-unavailable"), instance=request.url.path,
                            headers={"Retry-After": "5"})


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return problem_response(500, "Internal error", "an unexpected error occurred; it has been logged",
                            type_=_type_uri("internal-error"), instance=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, problem_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)
    app.add_exception_handler(redis.RedisError, redis_down_handler)
    app.add_exception_handler(Exception, unexpected_handler)


PROBLEM_SCHEMA = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": True,
}
UNDOCUMENTED_ERRORS = ("/healthz", "/readyz", "/metrics")


def document_problems(app: FastAPI) -> None:
    """Make the OpenAPI say what the handlers do: every error response is application/problem+json."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, operations in schema.get("paths", {}).items():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = ref
                if path not in UNDOCUMENTED_ERRORS:
                    responses.setdefault("default", {"description": "an error (RFC 9457 problem details)",
                                                      "content": ref})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
