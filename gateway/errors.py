"""The gateway's problem+json wiring: the shared renderer (services.contracts.http), the job store being
down, and an OpenAPI that documents every error as a problem."""

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.contracts.http import install_problem_handlers, render
from services.contracts.problems import Problem, ProblemDetails

log = logging.getLogger(__name__)


async def redis_down_handler(request: Request, exc: redis.RedisError) -> JSONResponse:
    log.error("job store unavailable: %s", type(exc).__name__)
    return render(Problem(503, "Job store unavailable", "the job store (Redis) does not answer; retry soon",
                          type_="store-unavailable", headers={"Retry-After": "5"}), request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    install_problem_handlers(app)
    app.add_exception_handler(redis.RedisError, redis_down_handler)


PROBLEM_SCHEMA = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
PROBLEM_DEFS = PROBLEM_SCHEMA.pop("$defs", {})
UNDOCUMENTED_ERRORS = ("/healthz", "/readyz", "/metrics")


def document_problems(app: FastAPI) -> None:
    """Make the OpenAPI say what the handlers do: every error response is application/problem+json."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update({**PROBLEM_DEFS, "Problem": PROBLEM_SCHEMA})
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
