"""POST /finetune: start a DreamBooth fine-tune on 3–20 images of a subject."""

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from gateway.limits import FinetuneSlot, check_caps
from gateway.schemas import job_view
from gateway.state import State
from gateway.submit import check_idempotency_key, fingerprint, submit
from gateway.uploads import Upload, check_image, decode_base64_images, parse_json_field, read_multipart
from gateway.webhooks import webhook_spec
from services.contracts.finetune import (
    MAX_INSTANCE_IMAGES,
    MIN_INSTANCE_IMAGES,
    FinetuneConfig,
    FinetuneJSONRequest,
)
from services.contracts.jobs import JobType, JobView
from services.contracts.problems import Problem, validation_problem
from services.contracts.webhooks import WebhookRequest

WEBHOOK_FIELDS = WebhookRequest.model_json_schema()["properties"]

router = APIRouter(tags=["finetune"])
MIN_IMAGES, MAX_IMAGES = MIN_INSTANCE_IMAGES, MAX_INSTANCE_IMAGES

_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["images", "config"],
                "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                               "minItems": MIN_IMAGES, "maxItems": MAX_IMAGES},
                    "config": {"type": "string", "description": "the fine-tune config as a JSON object"},
                    "webhook": WEBHOOK_FIELDS["webhook"],
                    "webhook_events": {"type": "string", "description": "comma-separated: any of start, "
                                       "progress, completed (default: all)"},
                },
            }},
            "application/json": {"schema": FinetuneJSONRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
        },
    }
}


async def _read_request(request: Request, max_file_bytes: int) -> tuple[list[Upload], dict, dict]:
    """(images, config, webhook fields)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        files, fields = await read_multipart(request, max_files=MAX_IMAGES, max_file_bytes=max_file_bytes)
        if "config" not in fields:
            raise Problem(422, "Missing config", "send the fine-tune settings as a JSON object in the `config` field",
                          type_="validation-error")
        hook = {k: fields[k] for k in ("webhook", "webhook_events") if k in fields}
        return files, parse_json_field(fields["config"], "config"), hook
    if ctype.startswith("application/json"):
        try:
            body = FinetuneJSONRequest.model_validate_json(await request.body())
        except ValidationError as e:
            raise validation_problem(e) from e
        files = await run_in_threadpool(decode_base64_images, body.images, max_files=MAX_IMAGES,
                                        max_file_bytes=max_file_bytes)
        return files, body.config, body.model_dump(include={"webhook", "webhook_events"}, exclude_unset=True)
    raise Problem(415, "Unsupported media type", "send multipart/form-data (images + config) or application/json",
                  type_="unsupported-media-type")


def check_base_model(base_model: str | None, allowed: str) -> None:
    """`base_model` names files or hub ids on the workers: only the operator's allow-list is accepted."""
    names = [n.strip() for n in allowed.split(",") if n.strip()]
    if base_model is not None and base_model not in names:
        hint = f"one of: {', '.join(names)}" if names else "leave it unset (the operator allows no other)"
        raise Problem(422, "Base model not allowed", f"config.base_model `{base_model}` is not allowed; {hint}",
                      type_="base-model-not-allowed")


@router.post("/finetune", status_code=202, response_model=JobView, openapi_extra=_OPENAPI_BODY)
async def finetune(request: Request, state: State, owner: Caller,
                   idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Start fine-tuning; poll `GET /jobs/{id}` or follow `GET /jobs/{id}/events`."""
    s = state.settings
    idem = check_idempotency_key(idempotency_key)
    files, raw_config, hook = await _read_request(request, s.limits.max_file_bytes)
    try:
        config = FinetuneConfig.model_validate(raw_config)
    except ValidationError as e:
        raise validation_problem(e, prefix=("config",)) from e
    check_base_model(config.base_model, s.allowed_base_models)
    check_caps(config, s)
    if config.devices > 1:
        raise Problem(422, "Invalid request", "config.devices: a fine-tune job trains on one GPU; "
                      "multi-GPU training runs with `python -m services.dreambooth.train`", type_="validation-error")
    if not MIN_IMAGES <= len(files) <= MAX_IMAGES:
        raise Problem(422, "Wrong number of images",
                      f"send {MIN_IMAGES}–{MAX_IMAGES} images of the subject; got {len(files)}",
                      type_="wrong-image-count")
    # decoding checks every pixel (PIL): off the event loop, so other requests and streams go on meanwhile
    checked = await run_in_threadpool(lambda: [check_image(f, max_pixels=s.limits.max_image_pixels,
                                                           min_side=config.min_image_side) for f in files])
    formats = [fmt for fmt, _, _ in checked]
    spec = {"config": config.model_dump(mode="json")}
    if webhook := await run_in_threadpool(webhook_spec, hook, state.job_settings):
        spec["webhook"] = webhook

    slot = FinetuneSlot(state, owner, idem)

    def write_inputs(job_id: str) -> dict:
        slot.take(job_id)
        keys = []
        for i, (f, fmt) in enumerate(zip(files, formats)):
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(fmt, fmt.lower())
            keys.append(state.artifacts.write_bytes(f"jobs/{job_id}/inputs/{i:03d}.{ext}", f.data))
        return {"inputs": keys}

    try:
        job, created = await run_in_threadpool(submit, state, owner, JobType.finetune, spec, idempotency_key=idem,
                                        fp=fingerprint(spec, [f.data for f in files]), write_inputs=write_inputs,
                                        input_bytes=sum(len(f.data) for f in files))
    except BaseException:
        await run_in_threadpool(slot.give_back)  # nothing was queued
        raise
    if not created:  # an Idempotency-Key replay of an earlier job
        await run_in_threadpool(slot.give_back)
    view = job_view(job, str(request.base_url))
    return JSONResponse(view.model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/jobs/{job.id}", **({} if created else {"Idempotent-Replayed": "true"})})

