"""Drives a job's status around the body of a Celery task, so every task reports the same way."""

import logging
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from services.jobs.heartbeat import JobLease, TaskHeartbeat, unacked_index_key
from services.jobs.schema import Job, JobError, JobStatus
from services.jobs.settings import JobSettings
from services.jobs.store import JobNotFound, JobStore, TransitionRefused

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """Raised by a job body when it sees that cancellation was requested."""


class JobFailed(Exception):
    """A failure the user can act on: its code and message go into the job record as they are."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def start(store: JobStore, job_id: str) -> Job | None:
    """Mark the job running. None when there is nothing to run (finished, canceled, or unknown)."""
    try:
        job = store.get(job_id)
    except JobNotFound:
        log.warning("task for unknown job %s dropped (expired or never created)", job_id)
        return None
    if job.status.terminal:
        log.info("job %s is already %s; duplicate delivery ignored", job_id, job.status.value)
        return None
    if job.status == JobStatus.running:  # delivered again after its worker died
        log.warning("job %s was running when its worker was lost; running it again", job_id)
        store.transition(job_id, JobStatus.queued, expected={JobStatus.running})
    try:
        return store.transition(job_id, JobStatus.running, expected={JobStatus.queued})
    except TransitionRefused:  # canceled between the two reads
        return None


def run_job(store: JobStore, job_id: str, body: Callable[[Job], dict[str, Any]]) -> None:
    """Run `body(job)` for a job and record how it ended; the result dict becomes `job.result`."""
    job = start(store, job_id)
    if job is None:
        return
    try:
        result = body(job)
    except JobCanceled:
        _finish(store, job_id, JobStatus.canceled)
    except JobFailed as e:
        _finish(store, job_id, JobStatus.failed, error=JobError(code=e.code, message=e.message))
    except SoftTimeLimitExceeded:
        _finish(store, job_id, JobStatus.failed,
                error=JobError(code="time_limit", message="the job ran past its time limit"))
    except NotImplementedError as e:
        _finish(store, job_id, JobStatus.failed, error=JobError(code="not_implemented", message=str(e)))
    except Exception as e:  # the job fails; the worker stays up for the next one
        log.exception("job %s failed", job_id)
        _finish(store, job_id, JobStatus.failed,
                error=JobError(code="internal_error", message=f"{type(e).__name__}: {e}"))
    else:
        _finish(store, job_id, JobStatus.succeeded, result=result)


def run_task(task: Any, store: JobStore, settings: JobSettings, job_id: str,
             body: Callable[[Job], dict[str, Any]]) -> None:
    """The body of a bound Celery task: lease the job, keep the message and the lease alive, run it.

    A delivery that finds the job leased by another live worker (its message came back while that worker
    still runs it, e.g. after a Redis outage longer than the visibility timeout) is retried later instead.
    """
    lease = JobLease(store.r, store.prefix, job_id, settings.job_lease_s)
    if not lease.acquire():
        log.warning("job %s is leased by %s; retrying this delivery in %d s", job_id, lease.holder(),
                    settings.job_lease_s)
        raise task.retry(countdown=settings.job_lease_s, max_retries=None)
    delivery = getattr(task.request, "delivery_info", None) or {}
    heartbeat = TaskHeartbeat(store.r, lease, settings.task_heartbeat_s,
                              unacked_index=unacked_index_key(settings.celery_keyprefix),
                              delivery_tag=delivery.get("delivery_tag"))
    try:
        with heartbeat:
            heartbeat.beat()  # at once: the message may have waited in the prefetch buffer
            run_job(store, job_id, body)
    finally:
        lease.release()


def _finish(store: JobStore, job_id: str, status: JobStatus, **kw: Any) -> None:
    try:
        store.transition(job_id, status, expected={JobStatus.running}, **kw)
    except TransitionRefused as e:
        log.warning("job %s could not become %s: %s", job_id, status.value, e)
