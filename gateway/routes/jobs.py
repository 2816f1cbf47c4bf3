"""GET /jobs, GET /jobs/{id}, POST /jobs/{id}/cancel, GET /jobs/{id}/events (SSE, resumable)."""

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from gateway.auth import Caller
from gateway.schemas import job_view
from gateway.state import AppState, State
from services.contracts.jobs import Job, JobList, JobStatus, JobType, JobView
from services.contracts.problems import Problem
from services.jobs.store import JobNotFound, TransitionRefused

router = APIRouter(tags=["jobs"])
_STREAM_ID = r"^\d+-\d+$"
_TERMINAL = {s.value for s in JobStatus if s.terminal}


def owned_job(state: AppState, job_id: str, owner: str) -> Job:
    try:
        return state.store.get_owned(job_id, owner)
    except JobNotFound:
        raise Problem(404, "Job not found", f"no job {job_id} for this API key", type_="job-not-found") from None


@router.get("/jobs", response_model=JobList)
def list_jobs(request: Request, state: State, owner: Caller,
              limit: Annotated[int, Query(ge=1, le=100)] = 20,
              cursor: Annotated[str | None, Query(pattern=r"^\d{0,20}$",
                                                  description="`next_cursor` of the previous page; "
                                                              "empty or absent: the first page")] = None,
              type: JobType | None = None) -> JobList:
    jobs, next_cursor = state.store.list_jobs(owner, limit=limit, cursor=cursor or None, job_type=type)
    return JobList(jobs=[job_view(j, str(request.base_url)) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobView)
def get_job(job_id: str, request: Request, state: State, owner: Caller) -> JobView:
    return job_view(owned_job(state, job_id, owner), str(request.base_url))


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
def cancel_job(job_id: str, request: Request, state: State, owner: Caller) -> JobView:
    owned_job(state, job_id, owner)
    try:
        job = state.store.cancel(job_id)
    except TransitionRefused as e:
        raise Problem(409, "Job already finished", f"job {job_id} is {e.current.value}; it cannot be canceled",
                      type_="job-finished") from e
    return job_view(job, str(request.base_url))


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}})
def job_events(job_id: str, state: State, owner: Caller,
               last_event_id: Annotated[str | None, Header(pattern=_STREAM_ID)] = None,
               after: Annotated[str | None, Query(pattern=_STREAM_ID, description="resume after this id")] = None,
               ) -> StreamingResponse:
    """Progress and status events; reconnect with `Last-Event-ID` to resume where the stream stopped."""
    owned_job(state, job_id, owner)
    start = last_event_id or after or "0-0"

    def stream() -> Iterator[str]:
        last = start
        yield "retry: 2000\n\n"
        while True:
            events = state.store.events(job_id, after=last, block_ms=5000)
            for e in events:
                last = e.id
                yield f"id: {e.id}\nevent: {e.event}\ndata: {json.dumps(e.data)}\n\n"
            if any(e.event == "status" and e.data.get("status") in _TERMINAL for e in events):
                return
            if not events:
                try:
                    job = state.store.get(job_id)
                except JobNotFound:
                    return
                if job.status.terminal and not state.store.events(job_id, after=last):
                    return
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
