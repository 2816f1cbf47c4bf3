"""Read a detect request (multipart ``images`` files + form params, or JSON base64) into bytes + params."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from services.contracts.detect import DetectJSONRequest, DetectParams
from services.contracts.problems import Problem, describe, field_errors

from .settings import DetectionSettings


def _too_many(count: int, limit: int) -> Problem:
    return Problem(413, "Too many files", f"{count} files in one request; the limit is {limit}",
                   type_="too-many-files")


def _file_too_large(index: int, size: int, limit: int) -> Problem:
    return Problem(413, "File too large", f"images[{index}] is {size} bytes; the limit is {limit}",
                   type_="file-too-large")


def _invalid(errors: list[dict], detail: str | None = None) -> Problem:
    return Problem(422, "Invalid request", detail or describe(errors), type_="validation-error", errors=errors)


def _params(raw: dict, prefix: tuple) -> DetectParams:
    try:
        return DetectParams.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(field_errors(exc.errors(include_url=False, include_context=False), prefix)) from exc


async def read_detect_request(request: Request, settings: DetectionSettings) -> tuple[list[bytes], DetectParams]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.limits.max_total_bytes:
        raise Problem(413, "Content too large",
                      f"the body is {length} bytes; the limit is {settings.limits.max_total_bytes}",
                      type_="content-too-large")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_multipart(request, settings)
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        return await _read_json(request, settings)
    raise Problem(415, "Unsupported media type",
                  f"send multipart/form-data with 'images' files or application/json, not {content_type}",
                  type_="unsupported-media-type")


async def _read_multipart(request: Request, settings: DetectionSettings) -> tuple[list[bytes], DetectParams]:
    limit = settings.limits.max_files
    try:
        form = await request.form(max_files=limit * 4 + 8, max_fields=64)
    except MultiPartException as exc:
        if "files" in str(exc).lower():
            raise _too_many(limit * 4 + 8, limit) from exc
        raise Problem(400, "Malformed multipart body", str(exc), type_="bad-multipart") from exc
    images = form.getlist("images")
    if not images:
        raise _invalid([{"loc": ["body", "images"], "msg": "at least one file is required", "type": "missing"}],
                       "no 'images' files in the form")
    if any(not isinstance(f, UploadFile) for f in images):
        raise _invalid([{"loc": ["body", "images"], "msg": "must be files, not text fields", "type": "file_type"}])
    if len(images) > limit:
        raise _too_many(len(images), limit)
    for i, f in enumerate(images):
        if f.size is not None and f.size > settings.limits.max_file_bytes:
            raise _file_too_large(i, f.size, settings.limits.max_file_bytes)
    raw = {k: v for k, v in form.multi_items() if k != "images"}
    params = _params(raw, ("body",))
    return [await f.read() for f in images], params


async def _read_json(request: Request, settings: DetectionSettings) -> tuple[list[bytes], DetectParams]:
    body = await request.body()
    try:
        parsed = DetectJSONRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise _invalid(field_errors(exc.errors(include_url=False, include_context=False), ("body",))) from exc
    if len(parsed.images) > settings.limits.max_files:
        raise _too_many(len(parsed.images), settings.limits.max_files)
    images = []
    for i, text in enumerate(parsed.images):
        payload = text.split(",", 1)[1] if text.startswith("data:") else text
        try:
            images.append(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise _invalid([{"loc": ["body", "images", i], "msg": "not valid base64", "type": "base64"}]) from exc
        if len(images[-1]) > settings.limits.max_file_bytes:
            raise _file_too_large(i, len(images[-1]), settings.limits.max_file_bytes)
    return images, parsed.params
