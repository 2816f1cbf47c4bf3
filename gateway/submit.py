"""Creating a job: idempotency, input artifacts, the job record and the Celery message, all or nothing."""

import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from gateway.quota import check_storage_quota
from gateway.state import AppState
from services.contracts.jobs import Job, JobType, new_job_id
from services.contracts.problems import Problem
from services.jobs.interface import IdempotencyConflict

log = logging.getLogger(__name__)
_IDEM_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def fingerprint(spec: dict[str, Any], blobs: list[bytes] = ()) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for b in blobs:
        h.update(hashlib.sha256(b).digest())
    return h.hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    if key is not None and not _IDEM_KEY.match(key):
        raise Problem(422, "Invalid Idempotency-Key", "use 1–128 letters, digits, `.`, `_`, `:` or `-`",
                      type_="validation-error")
    return key


def submit(state: AppState, owner: str, job_type: JobType, spec: dict[str, Any], *,
           idempotency_key: str | None, fp: str,
           write_inputs: Callable[[str], dict[str, Any]] | None = None,
           input_bytes: int = 0) -> tuple[Job, bool]:
    """Create and enqueue a job. Returns (job, created); a replayed Idempotency-Key returns the first job.

    `input_bytes` (the uploads) count against the owner's storage quota from the start."""
    check_storage_quota(state, owner, input_bytes)
    job_id = new_job_id()
    prefix = f"jobs/{job_id}"
    full_spec = dict(spec)
    if write_inputs is not None:
        full_spec.update(write_inputs(job_id))
    try:
        job, created = state.store.create(job_type, owner, full_spec, job_id=job_id,
                                          idempotency_key=idempotency_key, fingerprint=fp)
    except IdempotencyConflict as e:
        state.artifacts.delete(prefix)
        raise Problem(422, "Idempotency-Key reused", str(e), type_="idempotency-conflict") from e
    except Exception:
        state.artifacts.delete(prefix)
        raise
    if not created:
        state.artifacts.delete(prefix)
        return job, False
    try:
        state.store.enqueue(job)
        state.store.record_storage(owner, job.id, input_bytes)
    except Exception as e:
        log.error("could not enqueue job %s: %s", job.id, e)
        try:
            state.store.delete(job.id)
            state.artifacts.delete(prefix)
        finally:
            raise Problem(503, "Queue unavailable", "the job could not be queued; nothing was kept, retry soon",
                          type_="queue-unavailable", headers={"Retry-After": "5"}) from e
    return job, True


def prefer_wait(header: str | None, cap: float) -> float | None:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped; None when absent."""
    if not header:
        return None
    m = _PREFER_WAIT.search(header)
    return min(float(m.group(1)), cap) if m else None


async def wait_until_finished(state: AppState, job: Job, seconds: float) -> Job:
    """The job once it ends, or as it is after `seconds`: waits on the event loop, holding no thread."""
    if job.status.terminal:
        return job
    return await state.jobs.wait_finished(job.id, seconds)
