"""GET /jobs, GET /jobs/{id}, POST /jobs/{id}/cancel, GET /jobs/{id}/events (SSE, resumable).

Reads and event streams run on the event loop through the job system's async side: an open stream holds a
Redis connection while it waits, never a thread, so waiting clients cannot starve the thread pool."""

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from gateway.schemas import job_view
from gateway.state import AppState, State
from services.contracts.jobs import Job, JobList, JobStatus, JobType, JobView
from services.contracts.problems import Problem
from services.jobs.interface import JobNotFound, TransitionRefused

router = APIRouter(tags=["jobs"])
_STREAM_ID = r"^\d+-\d+$"
_TERMINAL = {s.value for s in JobStatus if s.terminal}
_WAIT_MS = 5000  # one blocking read of the job's stream; between two, the job's status is checked


async def owned_job(state: AppState, job_id: str, owner: str) -> Job:
    try:
        return await state.jobs.get_owned(job_id, owner)
    except JobNotFound:
        raise Problem(404, "Job not found", f"no job {job_id} for this API key", type_="job-not-found") from None


@router.get("/jobs", response_model=JobList)
async def list_jobs(request: Request, state: State, owner: Caller,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20,
                    cursor: Annotated[str | None, Query(pattern=r"^\d{0,20}$",
                                                        description="`next_cursor` of the previous page; "
                                                                    "empty or absent: the first page")] = None,
                    type: JobType | None = None) -> JobList:
    jobs, next_cursor = await run_in_threadpool(state.store.list_jobs, owner, limit=limit, cursor=cursor or None,
                                                job_type=type)
    return JobList(jobs=[job_view(j, str(request.base_url)) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobView)
async def get_job(job_id: str, request: Request, state: State, owner: Caller) -> JobView:
    return job_view(await owned_job(state, job_id, owner), str(request.base_url))


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
async def cancel_job(job_id: str, request: Request, state: State, owner: Caller) -> JobView:
    await owned_job(state, job_id, owner)
    try:
        job = await run_in_threadpool(state.store.cancel, job_id)
    except TransitionRefused as e:
        raise Problem(409, "Job already finished", f"job {job_id} is {e.current.value}; it cannot be canceled",
                      type_="job-finished") from e
    return job_view(job, str(request.base_url))


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
                       429: {"description": "this API key has too many event streams open"}})
async def job_events(job_id: str, state: State, owner: Caller,
                     last_event_id: Annotated[str | None, Header(pattern=_STREAM_ID)] = None,
                     after: Annotated[str | None, Query(pattern=_STREAM_ID, description="resume after this id")] = None,
                     ) -> EventSourceResponse:
    """Progress and status events; reconnect with `Last-Event-ID` to resume where the stream stopped."""
    await owned_job(state, job_id, owner)
    slot = state.streams.take(owner)  # 429 beyond the per-key cap; given back when the stream ends
    start = last_event_id or after or "0-0"

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            last = start
            yield ServerSentEvent(retry=2000, sep="\n")
            while True:
                events = await state.jobs.events(job_id, after=last, block_ms=_WAIT_MS)
                for e in events:
                    last = e.id
                    yield ServerSentEvent(data=json.dumps(e.data), event=e.event, id=e.id, sep="\n")
                if any(e.event == "status" and e.data.get("status") in _TERMINAL for e in events):
                    return
                if not events:
                    try:
                        job = await state.jobs.get(job_id)
                    except JobNotFound:
                        return
                    if job.status.terminal and not await state.jobs.events(job_id, after=last):
                        return
                    yield ServerSentEvent(comment="keep-alive", sep="\n")
        finally:
            slot.release()

    return EventSourceResponse(stream(), sep="\n", ping=0, background=BackgroundTask(slot.release),
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
