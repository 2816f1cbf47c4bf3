"""GET /jobs, GET /jobs/{id}, POST /jobs/{id}/cancel, GET /jobs/{id}/events (SSE, resumable).

Reads and event streams run on the event loop through the job system's async side, never holding a thread;
the streams of one job share one reader of its events (gateway/event_hub.py)."""

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from gateway.event_hub import KEEP_ALIVE
from gateway.schemas import job_view
from gateway.state import AppState, State
from services.contracts.jobs import Job, JobList, JobType, JobView
from services.contracts.problems import Problem
from services.jobs.interface import Event, JobNotFound, TransitionRefused

router = APIRouter(tags=["jobs"])
_WIRE: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # recent events, encoded once for all streams


def _wire(job_id: str, e: Event) -> bytes:
    key = (job_id, e.id)
    if (wire := _WIRE.get(key)) is None:
        wire = _WIRE[key] = ServerSentEvent(data=json.dumps(e.data), event=e.event, id=e.id, sep="\n").encode()
        if len(_WIRE) > 4096:
            _WIRE.popitem(last=False)
    return wire
_STREAM_ID = r"^\d+-\d+$"


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

    async def stream() -> AsyncIterator[ServerSentEvent | bytes]:
        try:
            yield ServerSentEvent(retry=2000, sep="\n")
            async for e in state.events.follow(job_id, after=start):
                if e is KEEP_ALIVE:
                    yield ServerSentEvent(comment="keep-alive", sep="\n")
                else:
                    yield _wire(job_id, e)
        finally:
            slot.release()

    return EventSourceResponse(stream(), sep="\n", ping=0, background=BackgroundTask(slot.release),
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
