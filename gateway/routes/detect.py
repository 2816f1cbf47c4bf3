"""POST /detect: text detection, forwarded to the detection service."""

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from gateway.detect_uploads import check_detect_uploads
from gateway.multipart_check import scan_multipart
from gateway.state import State
from gateway.uploads import decode_base64_images
from services.contracts.detect import DetectJSONRequest, DetectParams, DetectResponse
from services.contracts.problems import Problem, validation_problem

router = APIRouter(tags=["detection"])
INLINE_BODY_BYTES = 1 << 20

_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["images"],
                "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    **{k: v for k, v in DetectParams.model_json_schema()["properties"].items()},
                },
            }},
            "application/json": {"schema": DetectJSONRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
        },
    }
}


@router.post("/detect", response_model=DetectResponse, openapi_extra=_OPENAPI_BODY,
             responses={413: {"description": "too many or too large images"},
                        503: {"description": "detection service unavailable or overloaded"}})
async def detect(request: Request, state: State, owner: Caller) -> Response:
    """Find text boxes in one or more images (multipart `images`, or JSON base64) with optional thresholds."""
    s = state.settings
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(("multipart/form-data", "application/json")):
        raise Problem(415, "Unsupported media type", "send multipart/form-data with `images` files, "
                      "or application/json with base64 `images`", type_="unsupported-media-type")
    body = await request.body()  # counted and capped by BodySizeLimit while it arrives
    # parsing is CPU work: a large body goes off the event loop; a small one (~0.1 ms to scan) costs less than the
    # hop to a worker thread and back
    offload = len(body) > INLINE_BODY_BYTES
    if ctype.startswith("multipart/form-data"):
        scan = partial(scan_multipart, body, ctype, max_files=s.limits.max_files,
                       max_file_bytes=s.limits.max_file_bytes)
        form = await run_in_threadpool(scan) if offload else scan()
        try:
            params = DetectParams.model_validate(form.fields)
        except ValidationError as e:
            raise validation_problem(e) from e
        files = form.files
    else:
        try:
            parsed = DetectJSONRequest.model_validate_json(body)
        except ValidationError as e:
            raise validation_problem(e) from e
        decode = partial(decode_base64_images, parsed.images, max_files=s.limits.max_files,
                         max_file_bytes=s.limits.max_file_bytes)
        files = await run_in_threadpool(decode) if offload else decode()
        params = parsed.params
    if not files:
        raise Problem(422, "No images", "send at least one image in the `images` field", type_="validation-error")
    await check_detect_uploads(files, params, s.limits)  # formats, pixels and pages, before it travels on
    # the body as received: no second parse, no re-encoding; the detection service reads the same format
    upstream = await state.forwarder.post("/v1/detect", body, ctype)
    passthrough = {k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after",)}
    return Response(upstream.content, status_code=upstream.status_code, headers=passthrough,
                    media_type=upstream.headers.get("content-type", "application/json"))

