"""POST /detect: text detection, forwarded to the detection service."""

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from gateway.auth import Caller
from gateway.detection_client import forward
from gateway.state import State
from gateway.uploads import decode_base64_images, read_multipart, sniff_format
from services.contracts.detect import DetectJSONRequest, DetectParams, DetectResponse
from services.contracts.problems import Problem, validation_problem

router = APIRouter(tags=["detection"])
PDF_MAGIC = b"%PDF-"

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
    if ctype.startswith("multipart/form-data"):
        files, fields = await read_multipart(request, max_files=s.max_files, max_file_bytes=s.max_file_bytes)
        try:
            params = DetectParams.model_validate(fields)
        except ValidationError as e:
            raise validation_problem(e) from e
    elif ctype.startswith("application/json"):
        try:
            body = DetectJSONRequest.model_validate_json(await request.body())
        except ValidationError as e:
            raise validation_problem(e) from e
        files = decode_base64_images(body.images, max_files=s.max_files, max_file_bytes=s.max_file_bytes)
        params = body.params
    else:
        raise Problem(415, "Unsupported media type", "send multipart/form-data with `images` files, "
                      "or application/json with base64 `images`", type_="unsupported-media-type")
    if not files:
        raise Problem(422, "No images", "send at least one image in the `images` field", type_="validation-error")
    for f in files:  # the same 415 as every other route, before the upload travels on
        if not f.data.startswith(PDF_MAGIC):  # PDFs are the detection service's to read or refuse
            sniff_format(f)
    data = {k: str(v.value if hasattr(v, "value") else v) for k, v in params.model_dump(exclude_none=True).items()}
    upstream = await forward(
        state.detection, "POST", "/v1/detect", data=data,
        files=[("images", (f.filename, f.data, f.content_type or "application/octet-stream")) for f in files],
    )
    passthrough = {k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after",)}
    return Response(upstream.content, status_code=upstream.status_code, headers=passthrough,
                    media_type=upstream.headers.get("content-type", "application/json"))

