"""The job system as the rest of the code sees it: what a job store, a queue, leases, batch claims and
counters do, never how. The one implementation is `services.jobs.redis_system` (Redis + Celery/Kombu); no
module outside it knows a key name, a Lua script or a Kombu detail.

To extend: add the method here (with its docstring: the contract), implement it in `RedisJobSystem`, and
add its contract test in tests/unit/jobs/test_job_system.py.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from services.contracts.finetune import TrainingMetrics
from services.contracts.jobs import Job, JobError, JobStatus, JobType, Progress


class JobNotFound(LookupError):
    pass


class TransitionRefused(RuntimeError):
    def __init__(self, job_id: str, current: JobStatus, wanted: JobStatus | None):
        self.current = current
        super().__init__(f"job {job_id} is {current.value}; it cannot become {wanted.value if wanted else '?'}")


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different request body."""


@dataclass(frozen=True)
class Event:
    """One entry of a job's event stream; `id` is the resume point (SSE `Last-Event-ID`)."""

    id: str
    event: str
    data: dict[str, Any]


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    count: int
    limit: int
    retry_after_s: int


class Lease(Protocol):
    """One worker's exclusive, expiring hold on a job."""

    token: str

    def acquire(self) -> bool: ...
    def renew(self) -> bool: ...
    def holder(self) -> str | None: ...
    def release(self) -> None: ...


class Heartbeat(Protocol):
    """While open (a context manager), renews a lease and keeps a task's delivery from being redelivered."""

    beats: int

    def beat(self) -> None: ...
    def __enter__(self) -> "Heartbeat": ...
    def __exit__(self, *exc: object) -> None: ...


class BatchClaims(Protocol):
    """Leases that let one worker run other queued jobs in its own pipeline call, and leave their results
    for the worker that later receives their messages."""

    token: str

    def claim(self, job_id: str) -> bool:
        """Take the claim (or confirm this holder has it); False when another holder has it."""

    def renew(self, job_ids: list[str]) -> None:
        """Extend this holder's claims (others' are left alone)."""

    def release(self, job_id: str) -> None:
        """Drop the claim if this holder has it."""

    def publish(self, job_id: str, result: dict[str, Any]) -> None:
        """Leave the job's result for whoever gets its message, and drop the claim, in one step."""

    def wait_for_holder(self, job_id: str, poll_s: float = 0.5) -> dict[str, Any] | None:
        """The result another holder made for this job (waiting while its claim lives); None: run it here."""


class InFlightSlots(Protocol):
    """Per-owner slots of jobs in flight (queued or running), for limits such as "at most 2 fine-tunes".
    A slot is taken, atomically with the count, before its job is created, and given back when the job ends
    (a terminal transition or a delete); one whose job ended or never appeared is dropped at the next reserve."""

    def reserve(self, owner: str, job_type: JobType | str, job_id: str, limit: int) -> int | None:
        """Take a slot for `job_id`: None when taken (or already held), else how many are in flight."""

    def release(self, owner: str, job_type: JobType | str, job_id: str) -> None: ...
    def count(self, owner: str, job_type: JobType | str) -> int: ...


class JobSystem(Protocol):
    """Jobs, their events, their queue, leases, batch claims and per-owner counters."""

    inflight: InFlightSlots

    # records ------------------------------------------------------------------------------------------
    def create(self, job_type: JobType, owner: str, spec: dict[str, Any], *, job_id: str | None = None,
               idempotency_key: str | None = None, fingerprint: str = "") -> tuple[Job, bool]:
        """Create a queued job: (job, created). A reused Idempotency-Key returns the earlier job (created False)
        or raises IdempotencyConflict (a different fingerprint). Check and writes are one atomic step."""

    def idempotent_job_id(self, owner: str, idempotency_key: str) -> str | None:
        """The job an Idempotency-Key already made, while it is remembered."""

    def get(self, job_id: str) -> Job: ...

    def get_owned(self, job_id: str, owner: str) -> Job:
        """The job if `owner` owns it; another owner's job is JobNotFound, not forbidden."""

    def list_jobs(self, owner: str, limit: int = 20, cursor: str | None = None,
                  job_type: JobType | None = None) -> tuple[list[Job], str | None]:
        """The owner's jobs, newest first, and the cursor of the next page (None at the end)."""

    def delete(self, job_id: str) -> None:
        """Remove a job record, its events and its index entries."""

    def transition(self, job_id: str, new: JobStatus, *, expected: Iterable[JobStatus] | None = None,
                   result: dict[str, Any] | None = None, error: JobError | None = None) -> Job:
        """Move the job to `new` if ALLOWED_TRANSITIONS (and `expected`, when given) allow it from its current
        status, else TransitionRefused; records the status event atomically with the change."""

    def report_progress(self, job_id: str, progress: Progress,
                        metrics: TrainingMetrics | dict[str, float] | None = None) -> None:
        """Record progress of a running job; TransitionRefused once it left `running`."""

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; flag a running one (its worker stops at the next step)."""

    def cancel_requested(self, job_id: str) -> bool: ...

    def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
               count: int = 100) -> list[Event]:
        """Events after stream id `after` (exclusive); waits up to `block_ms` for new ones when given."""

    # queue ---------------------------------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        """Send the job's task to its queue (raises when the broker cannot take it)."""

    def queued_job_ids(self, job_type: JobType, limit: int = 200) -> list[str]:
        """Ids of jobs whose tasks wait in the queue, oldest first (read only)."""

    def queue_depth(self, job_type: JobType) -> int: ...

    # workers -------------------------------------------------------------------------------------------
    def lease(self, job_id: str, ttl_s: int) -> Lease: ...

    def heartbeat(self, lease: Lease, interval_s: float, delivery_tag: str | None) -> Heartbeat:
        """While the context is open, renew `lease` and keep the task's delivery from being redelivered."""

    def batch_claims(self, lease_s: int, result_ttl_s: int = 3600) -> BatchClaims: ...

    # counters ------------------------------------------------------------------------------------------
    def hit_rate(self, owner: str, limit: int, window_s: int = 60) -> RateDecision:
        """Count one request of `owner` in the current fixed window; `allowed` is False over `limit`."""

    def active_count(self, owner: str, job_type: JobType) -> int:
        """The owner's jobs of this type holding an in-flight slot."""

    # models made by fine-tunes (kept after their job record expires) ---------------------------------------
    def register_model(self, owner: str, model_id: str, info: dict[str, Any]) -> None: ...
    def get_model(self, model_id: str, owner: str) -> dict[str, Any]: ...
    def list_models(self, owner: str) -> list[dict[str, Any]]: ...

    def unregister_model(self, model_id: str) -> str | None:
        """Remove a model's registration (generation naming it then fails); its owner, or None."""

    def model_owner(self, model_id: str) -> str | None: ...

    # data lifecycle: deletion, storage use, recovery (services/jobs/deletion.py, sweeper.py, reindex.py) -----
    def mark_deleted(self, job_id: str) -> None:
        """Tombstone a deleted job, so files written for it afterwards are removed (sweeper, worker)."""

    def is_deleted(self, job_id: str) -> bool: ...
    def deleted_ids(self) -> set[str]: ...

    def forget_deleted(self, older_than: float) -> None:
        """Drop tombstones recorded before `older_than` (epoch seconds)."""

    def live_ids(self, job_ids: list[str]) -> set[str]:
        """Which of `job_ids` still have a job record or a registered model."""

    def record_storage(self, owner: str, job_id: str, nbytes: int) -> bool:
        """Set the bytes a job's files take, counted for `owner`; refused (False) once the job is deleted."""

    def drop_storage(self, job_id: str) -> None: ...

    def storage_used(self, owner: str) -> int:
        """The bytes all the owner's counted jobs take."""

    def is_indexed(self) -> bool:
        """False when the store lost its data (or is new): models must be rebuilt from the artifact store."""

    def mark_indexed(self) -> None: ...

    def try_lock(self, name: str, ttl_s: int) -> bool:
        """Take a named lock that lapses after `ttl_s` (one sweeper at a time across gateways)."""

    def persistence(self) -> dict[str, str] | None:
        """The store's persistence settings (`appendonly`, `save`); None when they cannot be read."""

    def webhook_outbox(self, progress_interval_s: float = 10.0) -> Any:
        """Where webhook deliveries wait (services/jobs/webhooks.py `Outbox`)."""

    def ping(self) -> bool: ...


class AsyncJobSystem(Protocol):
    """The job system's async side, for an event loop: reads, waits and counts without holding a thread."""

    async def get(self, job_id: str) -> Job: ...
    async def get_owned(self, job_id: str, owner: str) -> Job: ...

    async def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
                     count: int = 100) -> list[Event]: ...

    async def wait_finished(self, job_id: str, timeout_s: float) -> Job:
        """The job once it is terminal, or as it is after `timeout_s`."""

    async def add_rate(self, owner: str, window: int, requests: int, window_s: int = 60) -> int:
        """Add `requests` to the owner's count in fixed window number `window`; the count every replica added
        (the gateway's local-first limiter: gateway/rate_limit.py)."""

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...
