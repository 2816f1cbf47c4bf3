"""Drives a job's status around the body of a Celery task, so every task reports the same way."""

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from services.contracts.jobs import Job, JobError, JobStatus
from services.jobs.interface import JobNotFound, JobSystem, TransitionRefused
from services.jobs.settings import JobSettings

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """Raised by a job body when it sees that cancellation was requested."""


class JobFailed(Exception):
    """A failure the user can act on: its code and message go into the job record as they are."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def start(store: JobSystem, job_id: str) -> Job | None:
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


def run_job(store: JobSystem, job_id: str, body: Callable[[Job], dict[str, Any]]) -> None:
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
    except STORE_DOWN:
        raise  # not the job's fault: the task runs it again (run_task) instead of failing it
    except Exception as e:  # the job fails; the worker stays up for the next one
        log.exception("job %s failed", job_id)
        _finish(store, job_id, JobStatus.failed,
                error=JobError(code="internal_error", message=f"{type(e).__name__}: {e}"))
    else:
        _finish(store, job_id, JobStatus.succeeded, result=result)


# the job store (Redis) cannot be reached: a job that meets these is run again, never failed
STORE_DOWN = (redis.ConnectionError, redis.TimeoutError)


def wait_for_store(store: JobSystem, timeout_s: float) -> bool:
    """Wait (bounded) until the job store answers again."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return store.ping()
        except STORE_DOWN:
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5)


def run_task(task: Any, store: JobSystem, settings: JobSettings, job_id: str,
             body: Callable[[Job], dict[str, Any]]) -> None:
    """The body of a bound Celery task: lease the job, keep the message and the lease alive, run it.

    A delivery that finds the job leased by another live worker (its message came back while that worker
    still runs it, e.g. after a Redis outage longer than the visibility timeout) is retried later instead.
    """
    lease = store.lease(job_id, settings.job_lease_s)
    if not lease.acquire():
        log.warning("job %s is leased by %s; retrying this delivery in %d s", job_id, lease.holder(),
                    settings.job_lease_s)
        raise task.retry(countdown=settings.job_lease_s, max_retries=None)
    delivery = getattr(task.request, "delivery_info", None) or {}
    heartbeat = store.heartbeat(lease, settings.task_heartbeat_s, delivery.get("delivery_tag"))
    try:
        with heartbeat:
            heartbeat.beat()  # at once: the message may have waited in the prefetch buffer
            run_job(store, job_id, body)
    except STORE_DOWN as e:
        # Redis went away under the job: once it is back, deliver the task again (it resumes from its
        # checkpoint). If it stays away, the unacknowledged message comes back after the visibility timeout.
        log.warning("job %s: the job store went away (%s); running it again once it answers", job_id,
                    type(e).__name__)
        if not wait_for_store(store, STORE_WAIT_S):
            raise
        raise task.retry(countdown=1, max_retries=None) from e
    finally:
        try:
            lease.release()
        except STORE_DOWN:
            pass  # it lapses by itself


STORE_WAIT_S = 300  # how long a finished job waits for the job store to record how it ended


def _finish(store: JobSystem, job_id: str, status: JobStatus, **kw: Any) -> None:
    try:
        try:
            store.transition(job_id, status, expected={JobStatus.running}, **kw)
        except STORE_DOWN:  # the work is done: record it once Redis is back rather than doing it again
            log.warning("job %s ended (%s) while the job store is away; waiting for it", job_id, status.value)
            if not wait_for_store(store, STORE_WAIT_S):
                raise
            store.transition(job_id, status, expected={JobStatus.running}, **kw)
    except TransitionRefused as e:
        log.warning("job %s could not become %s: %s", job_id, status.value, e)
    except JobNotFound:
        log.info("job %s was deleted while it ran; nothing to record", job_id)
