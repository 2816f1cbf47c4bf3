"""DELETE /jobs/{id} and DELETE /models/{id}: a job or a fine-tuned model goes with all its files (204)."""

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from services.contracts.problems import Problem
from gateway.state import State
from services.jobs.deletion import delete_job, delete_model
from services.jobs.interface import JobNotFound

router = APIRouter(tags=["lifecycle"])


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
               responses={404: {"description": "no such job for this API key"}})
async def remove_job(job_id: str, state: State, owner: Caller) -> Response:
    """Delete a job: a queued or running job is canceled first; then its record, its inputs, checkpoints,
    images and (for a fine-tune) its model are removed. Afterwards the job and its files are 404."""
    try:
        job = await run_in_threadpool(state.store.get_owned, job_id, owner)
    except JobNotFound:
        raise Problem(404, "Job not found", f"no job {job_id} for this API key", type_="job-not-found") from None
    await run_in_threadpool(delete_job, state.store, state.artifacts, job)
    return Response(status_code=204)


@router.delete("/models/{model_id}", status_code=204, response_class=Response,
               responses={404: {"description": "no such fine-tuned model for this API key"}})
async def remove_model(model_id: str, state: State, owner: Caller) -> Response:
    """Delete a fine-tuned model's weights; generation requests naming it get 404 from then on."""
    try:
        await run_in_threadpool(delete_model, state.store, state.artifacts, model_id, owner)
    except JobNotFound:
        raise Problem(404, "Model not found", f"no fine-tuned model {model_id} for this API key",
                      type_="model-not-found") from None
    return Response(status_code=204)
