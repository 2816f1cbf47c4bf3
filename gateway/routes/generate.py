"""POST /generate: text-to-image from the base model or a fine-tune, optionally waiting for the images."""

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from gateway.schemas import job_view
from gateway.state import State
from gateway.submit import check_idempotency_key, fingerprint, prefer_wait, submit, wait_until_finished
from gateway.webhooks import webhook_spec
from services.contracts.generate import GenerateParams
from services.contracts.jobs import JobType, JobView
from services.contracts.problems import Problem, validation_problem
from services.contracts.webhooks import WebhookRequest
from services.jobs.interface import JobNotFound

router = APIRouter(tags=["generate"])


class GenerateBody(GenerateParams, WebhookRequest):
    """The generation parameters, and optionally a webhook for the job's events."""


@router.post("/generate", status_code=202, response_model=JobView,
             responses={200: {"model": JobView, "description": "finished within `Prefer: wait=N`"},
                        404: {"description": "`model` names no fine-tune of this API key (deleted, or never made)"}})
async def generate(body: GenerateBody, request: Request, state: State, owner: Caller,
                   prefer: Annotated[str | None, Header()] = None,
                   idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Queue image generation. With `Prefer: wait=N` the answer waits up to N seconds for the images."""
    idem = check_idempotency_key(idempotency_key)
    try:  # validated again as a whole: pydantic leaves defaults unchecked, and a default may be over a limit
        params = GenerateParams.model_validate(body.model_dump(exclude=set(WebhookRequest.model_fields)))
    except ValidationError as e:
        raise validation_problem(e) from e
    webhook = await run_in_threadpool(  # resolves the host (blocking DNS)
        webhook_spec, body.model_dump(include=set(WebhookRequest.model_fields), exclude_unset=True),
        state.job_settings)
    if params.model != "base":
        try:
            await run_in_threadpool(state.store.get_model, params.model, owner)
        except JobNotFound:
            raise Problem(404, "Unknown model", f"model `{params.model}` is neither `base` nor a fine-tune of "
                          "this API key that succeeded (see GET /models)", type_="unknown-model") from None
    spec = {"params": params.model_dump(mode="json"), **({"webhook": webhook} if webhook else {})}
    job, created = await run_in_threadpool(submit, state, owner, JobType.generate, spec, idempotency_key=idem,
                                           fp=fingerprint(spec))
    wait = prefer_wait(prefer, state.settings.max_wait_s)
    headers = {"Location": f"/jobs/{job.id}", **({} if created else {"Idempotent-Replayed": "true"})}
    if wait is not None:
        job = await wait_until_finished(state, job, wait)  # on the event loop: no thread held while waiting
        headers["Preference-Applied"] = f"wait={wait:g}"
    status = 200 if job.status.terminal else 202
    return JSONResponse(job_view(job, str(request.base_url)).model_dump(mode="json"), status_code=status,
                        headers=headers)
