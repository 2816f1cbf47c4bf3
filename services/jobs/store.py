"""Job records in Redis: a hash per job, a sorted set per owner, a bounded event stream per job.

Every status change runs as one Lua script, so it is atomic and only follows `ALLOWED_TRANSITIONS`,
however many gateways and workers race on the same job.
"""

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from services.contracts.finetune import TrainingMetrics
from services.contracts.jobs import (
    ALLOWED_TRANSITIONS,
    Job,
    JobError,
    JobStatus,
    JobType,
    Progress,
    utcnow,
)
from services.jobs.monitoring import JobStats
from services.jobs.quota import InFlightJobs
from services.jobs.settings import JobSettings
from services.jobs.redis_lifecycle import RedisLifecycle

# KEYS: job hash, events stream. ARGV: allowed current statuses (comma list, "" = any), new status
# ("" = keep), ttl seconds (0 = none), stream maxlen, event type, event json, incr-attempts flag, then
# field/value pairs. Returns {1, status} on success, {0, current status} on refusal, {-1} if missing.
_UPDATE = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1} end
if ARGV[1] ~= '' then
  local ok = false
  for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
  if not ok then return {0, cur} end
end
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local new = cur
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[2]); new = ARGV[2] end
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[5], 'data', ARGV[6])
end
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3]); redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return {1, new}
"""

# KEYS: job hash, owner index, idempotency key ("" = none), events stream.
# ARGV: job id, score, idempotency value, idempotency ttl, maxlen, event json, field/value pairs...
_CREATE = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'event', 'status', 'data', ARGV[6])
return false
"""

_SCALARS = ("id", "type", "owner", "status")


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
    id: str
    event: str
    data: dict[str, Any]


def _encode(job: Job) -> dict[str, str]:
    dumped = job.model_dump(mode="json")
    return {k: (str(v) if k in _SCALARS else json.dumps(v)) for k, v in dumped.items()}


def _decode(raw: dict[bytes, bytes]) -> Job:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    data: dict[str, Any] = {k: (fields[k] if k in _SCALARS else json.loads(fields[k])) for k in fields}
    return Job.model_validate(data)


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore(RedisLifecycle):
    def __init__(self, client: redis.Redis, prefix: str = "detbooth", ttl_s: int = 7 * 24 * 3600,
                 events_maxlen: int = 1000):
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.events_maxlen = events_maxlen
        self._update = client.register_script(_UPDATE)
        self._create = client.register_script(_CREATE)
        self.stats = JobStats(client, prefix)
        self.inflight = InFlightJobs(client, prefix, job_key_prefix=self._job_key(""))
        self.init_lifecycle(client, prefix)

    # keys
    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _events_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:jobs"

    def _idem_key(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{key}"

    def _models_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:models"

    # create / read
    def create(self, job_type: JobType, owner: str, spec: dict[str, Any], *, job_id: str | None = None,
               idempotency_key: str | None = None, fingerprint: str = "") -> tuple[Job, bool]:
        """Create a queued job. Returns (job, created); a reused Idempotency-Key returns the earlier job."""
        job = Job(id=job_id or new_job_id(), type=job_type, owner=owner, created_at=utcnow(), spec=spec)
        idem = self._idem_key(owner, idempotency_key) if idempotency_key else ""
        flat = [x for kv in _encode(job).items() for x in kv]
        event = json.dumps({"status": job.status.value})
        score = int(job.created_at.timestamp() * 1_000_000)
        existing = self._create(
            keys=[self._job_key(job.id), self._owner_key(owner), idem, self._events_key(job.id)],
            args=[job.id, score, f"{job.id}|{fingerprint}", self.ttl_s, self.events_maxlen, event, *flat],
        )
        if existing is None:
            return job, True
        earlier_id, _, earlier_fp = existing.decode().partition("|")
        if earlier_fp != fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request; use a new key"
            )
        return self.get(earlier_id), False

    def idempotent_job_id(self, owner: str, idempotency_key: str) -> str | None:
        """The job an Idempotency-Key already made, if it is still remembered."""
        raw = self.r.get(self._idem_key(owner, idempotency_key))
        return raw.decode().partition("|")[0] if raw else None

    def get(self, job_id: str) -> Job:
        raw = self.r.hgetall(self._job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return _decode(raw)

    def get_owned(self, job_id: str, owner: str) -> Job:
        """The job if `owner` owns it; another owner's job is reported as missing, not forbidden."""
        job = self.get(job_id)
        if job.owner != owner:
            raise JobNotFound(job_id)
        return job

    def list_jobs(self, owner: str, limit: int = 20, cursor: str | None = None,
             job_type: JobType | None = None) -> tuple[list[Job], str | None]:
        """The owner's jobs, newest first. `cursor` is the opaque value a previous page returned."""
        top = f"({cursor}" if cursor else "+inf"
        jobs: list[Job] = []
        while True:
            rows = self.r.zrevrangebyscore(self._owner_key(owner), top, "-inf", start=0, num=limit,
                                           withscores=True)
            if not rows:
                return jobs, None
            pipe = self.r.pipeline()
            for job_id, _ in rows:
                pipe.hgetall(self._job_key(job_id.decode()))
            for (job_id, score), raw in zip(rows, pipe.execute()):
                top = f"({int(score)}"
                if not raw:  # expired: drop it from the index
                    self.r.zrem(self._owner_key(owner), job_id)
                    continue
                job = _decode(raw)
                if job_type is None or job.type == job_type:
                    jobs.append(job)
                if len(jobs) == limit:
                    return jobs, top[1:]

    def delete(self, job_id: str) -> None:
        """Remove a job that never reached the queue (used to roll back a failed enqueue)."""
        job = self.get(job_id)
        pipe = self.r.pipeline()
        pipe.delete(self._job_key(job_id), self._events_key(job_id))
        pipe.zrem(self._owner_key(job.owner), job_id)
        pipe.execute()

    # status changes
    def _run_update(self, job_id: str, *, allowed: Iterable[JobStatus] | None, new: JobStatus | None,
                    fields: dict[str, Any], event: str = "", event_data: dict[str, Any] | None = None,
                    incr_attempts: bool = False) -> JobStatus:
        flat: list[str] = []
        for k, v in fields.items():
            flat += [k, v if isinstance(v, str) and k in _SCALARS else json.dumps(v)]
        ttl = self.ttl_s if new is not None and new.terminal else 0
        res = self._update(
            keys=[self._job_key(job_id), self._events_key(job_id)],
            args=[",".join(s.value for s in allowed) if allowed is not None else "", new.value if new else "",
                  ttl, self.events_maxlen, event, json.dumps(event_data or {}), "1" if incr_attempts else "0",
                  *flat],
        )
        if res[0] == -1:
            raise JobNotFound(job_id)
        current = JobStatus(res[1].decode())
        if res[0] == 0:
            raise TransitionRefused(job_id, current, new)
        return current

    def transition(self, job_id: str, new: JobStatus, *, expected: Iterable[JobStatus] | None = None,
                   result: dict[str, Any] | None = None, error: JobError | None = None) -> Job:
        """Move a job to `new` if its current status allows it (and is one of `expected`, when given)."""
        allowed = {s for s, targets in ALLOWED_TRANSITIONS.items() if new in targets}
        if expected is not None:
            allowed &= set(expected)
        now = utcnow().isoformat()
        fields: dict[str, Any] = {}
        if new == JobStatus.running:
            fields["started_at"] = now
        if new.terminal:
            fields["finished_at"] = now
        if result is not None:
            fields["result"] = result
        if error is not None:
            fields["error"] = error.model_dump()
        data: dict[str, Any] = {"status": new.value}
        if error is not None:
            data["error"] = error.model_dump()
        if result is not None:
            data["result"] = result
        self._run_update(job_id, allowed=allowed, new=new, fields=fields, event="status", event_data=data,
                         incr_attempts=new == JobStatus.running)
        job = self.get(job_id)
        ran = (job.finished_at - job.started_at).total_seconds() if new.terminal and job.started_at else None
        self.stats.record(job.id, job.type.value, new.value, ran)
        if new.terminal:
            self.inflight.release(job.owner, job.type.value, job.id)
        self.notify_status(job, new)
        return job

    def report_progress(self, job_id: str, progress: Progress,
                        metrics: TrainingMetrics | dict[str, float] | None = None) -> None:
        """Record progress of a running job; ignored (TransitionRefused) once the job left `running`.

        Metrics go through `TrainingMetrics`, so a value under a name no reader knows is refused here."""
        fields: dict[str, Any] = {"progress": progress.model_dump()}
        if metrics:
            metrics = TrainingMetrics.model_validate(metrics).reported()
            fields["metrics"] = metrics
        self._run_update(job_id, allowed={JobStatus.running}, new=None, fields=fields, event="progress",
                         event_data={"progress": progress.model_dump(), "metrics": metrics or {}})
        self.notify_progress(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; ask a running one to stop (its worker checks every step)."""
        job = self.get(job_id)
        if job.status == JobStatus.queued:
            try:
                return self.transition(job_id, JobStatus.canceled, expected={JobStatus.queued})
            except TransitionRefused:
                job = self.get(job_id)  # a worker took it meanwhile: fall through to the running case
        if job.status == JobStatus.running:
            self._run_update(job_id, allowed={JobStatus.running}, new=None, fields={"cancel_requested": True},
                             event="cancel_requested", event_data={})
            return self.get(job_id)
        raise TransitionRefused(job_id, job.status, JobStatus.canceled)

    def cancel_requested(self, job_id: str) -> bool:
        """True when the job was asked to stop, or no longer exists (deleted while it ran)."""
        raw = self.r.hget(self._job_key(job_id), "cancel_requested")
        return raw is None or raw == b"true"

    # events
    def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None, count: int = 100) -> list[Event]:
        """Events after stream id `after` (exclusive); waits up to `block_ms` (≤ 10 s) for new ones when given."""
        key = self._events_key(job_id)
        if block_ms is None:
            rows = self.r.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        else:
            got = self.r.xread({key: after}, count=count, block=min(block_ms, 10_000))
            rows = got[0][1] if got else []
        return [Event(id=i.decode(), event=f[b"event"].decode(), data=json.loads(f[b"data"])) for i, f in rows]

    # models made by fine-tunes: kept after their job record expires
    def register_model(self, owner: str, model_id: str, info: dict[str, Any]) -> None:
        now = utcnow()
        info = {"created_at": now.isoformat(), **info}
        pipe = self.r.pipeline()
        pipe.hset(f"{self.prefix}:model:{model_id}", mapping={"owner": owner, "info": json.dumps(info)})
        pipe.zadd(self._models_key(owner), {model_id: now.timestamp()})
        pipe.execute()

    def get_model(self, model_id: str, owner: str) -> dict[str, Any]:
        raw = self.r.hgetall(f"{self.prefix}:model:{model_id}")
        if not raw or raw[b"owner"].decode() != owner:
            raise JobNotFound(model_id)
        return json.loads(raw[b"info"])

    def list_models(self, owner: str) -> list[dict[str, Any]]:
        """The owner's models, newest first; `created_at` is when the model was registered."""
        rows = [(i.decode(), score) for i, score in self.r.zrevrange(self._models_key(owner), 0, -1, withscores=True)]
        pipe = self.r.pipeline()
        for i, _ in rows:
            pipe.hget(f"{self.prefix}:model:{i}", "info")
        return [{"id": i, "created_at": datetime.fromtimestamp(score, UTC).isoformat(), **json.loads(info)}
                for (i, score), info in zip(rows, pipe.execute()) if info]

    def ping(self) -> bool:
        return bool(self.r.ping())


def store_from_settings(settings: JobSettings) -> JobStore:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=15, socket_connect_timeout=2,
                                  health_check_interval=10)
    store = JobStore(client, prefix=settings.key_prefix, ttl_s=settings.job_ttl_s,
                     events_maxlen=settings.events_maxlen)
    store.webhooks.progress_interval_s = settings.webhook_progress_interval_s
    return store
