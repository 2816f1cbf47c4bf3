"""Error types every service speaks and the RFC 9457 problem details they become.

One `type` scheme for the whole deployment: ``urn:detbooth:problem:<slug>``. The gateway passes the
detection service's problems through unchanged, so a client sees the same scheme whichever side refused.
This module imports only pydantic; the HTTP rendering lives in `services.contracts.http`.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:detbooth:problem:"


def problem_type(slug: str) -> str:
    """The `type` URI of a problem slug (`job-not-found` -> `urn:detbooth:problem:job-not-found`)."""
    return slug if slug.startswith(TYPE_PREFIX) or slug == "about:blank" else f"{TYPE_PREFIX}{slug}"


class FieldError(BaseModel):
    """One invalid input field: where it is, what is wrong, pydantic's error type."""

    loc: list[str | int]
    msg: str
    type: str


class ProblemDetails(BaseModel):
    """An RFC 9457 problem details body (extension members are allowed)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


class Problem(Exception):
    """An error with an HTTP status: raised anywhere, rendered once (`services.contracts.http`).

    `type_` is the slug of the problem type; it defaults to the title in kebab case. Extra keyword
    arguments become extension members of the body (e.g. `limit=2`).
    """

    def __init__(self, status: int, title: str, detail: str = "", *, type_: str | None = None,
                 headers: Mapping[str, str] | None = None, errors: list[dict[str, Any]] | None = None,
                 **extra: Any):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.type = type_ or title.lower().replace(" ", "-")
        self.headers = dict(headers or {})
        self.errors = errors
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": problem_type(self.type), "title": self.title, "status": self.status,
                               "detail": self.detail}
        if instance:
            out["instance"] = instance
        if self.errors is not None:
            out["errors"] = self.errors
        out.update(self.extra)
        return out


def field_errors(raw: Iterable[Mapping[str, Any]], prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """pydantic's error dicts reduced to `FieldError`s (loc, msg, type), with `prefix` before each loc."""
    return [{"loc": [*prefix, *e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in raw]


def describe(errors: list[dict[str, Any]]) -> str:
    """'field.path: message; other: message' for a list of field errors."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in errors)


def validation_problem(e: ValidationError, prefix: tuple[str | int, ...] = ()) -> Problem:
    """A 422 that names each invalid field, from a pydantic ValidationError."""
    errors = field_errors(e.errors(include_url=False, include_context=False), prefix)
    return Problem(422, "Invalid request", describe(errors), type_="validation-error", errors=errors)
