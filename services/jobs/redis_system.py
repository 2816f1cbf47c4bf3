"""The job system on Redis and Celery: the one module that knows key names, Lua scripts and Kombu details.

Job records are a hash per job, a sorted set per owner, a set of each owner's active jobs per type, and a
bounded event stream per job. Every multi-step change (create, status change, lease, claim, heartbeat, rate
count) is one Lua script, so it is atomic however many gateways and workers race on the same job.

Kombu details live here too: its Redis transport keeps a queue as the list `<global_keyprefix><queue>`
(consumers pop from the right) and delivered-but-unacknowledged messages in the sorted set
`<global_keyprefix>unacked_index`, scored by delivery time; a message whose score is older than
`visibility_timeout` is delivered again. A running task's heartbeat moves its own score to "now" (ZADD XX:
an acknowledged message is never brought back), so the timeout can be short without a live task running twice.
"""

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Self

import redis
import redis.asyncio as aioredis
from celery import Celery

from services.contracts.finetune import TrainingMetrics
from services.contracts.jobs import (
    ALLOWED_TRANSITIONS,
    Job,
    JobError,
    JobStatus,
    JobType,
    Progress,
    new_job_id,
    utcnow,
)
from services.jobs.keys import Keys
from services.jobs.interface import (
    Event,
    IdempotencyConflict,
    JobNotFound,
    RateDecision,
    TransitionRefused,
)
from services.jobs.monitoring import JobStats
from services.jobs.redis_lifecycle import RedisLifecycle
from services.jobs.settings import JobSettings
from services.jobs.tasks import QUEUE_FOR_TYPE, TASK_FOR_TYPE

log = logging.getLogger(__name__)
_SCALARS = ("id", "type", "owner", "status")
_ACTIVE = (JobStatus.queued, JobStatus.running)


# KEYS: job hash, owner index, idempotency key ("" = none), events stream.
# ARGV: job id, score, idempotency value, idempotency ttl, maxlen, event json, field/value pairs...
# Returns {0} when created, {1, earlier idempotency value} when the key was used before.
_CREATE = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {1, existing} end
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'event', 'status', 'data', ARGV[6])
return {0}
"""

# KEYS: job hash, events stream. ARGV: allowed current statuses (comma list, "" = any), new status
# ("" = keep), ttl seconds (0 = none), stream maxlen, event type, event json, incr-attempts flag,
# owner key prefix (for the in-flight slots), then field/value pairs. A terminal status gives the job's
# in-flight slot back in the same step.
# Returns {1, status} on success, {0, current status} on refusal, {-1} if missing.
_UPDATE = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1} end
if ARGV[1] ~= '' then
  local ok = false
  for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
  if not ok then return {0, cur} end
end
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local new = cur
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2]); new = ARGV[2]
  if new ~= 'queued' and new ~= 'running' then
    local info = redis.call('HMGET', KEYS[1], 'owner', 'type', 'id')
    redis.call('ZREM', ARGV[8] .. info[1] .. ':inflight:' .. info[2], info[3])
  end
end
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[5], 'data', ARGV[6])
end
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3]); redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return {1, new}
"""

# KEYS: job hash, events stream, owner index, owner's in-flight slots. ARGV: job id. Removes every trace of a job.
_DELETE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

# KEYS: the owner's in-flight slots. ARGV: job id, limit, now, job hash key prefix, grace s.
# Drops first the ids whose job has ended, or whose record never appeared within `grace` seconds (a slot is
# taken before the job record is written), so a missed release never keeps a slot. Returns 0 when the slot
# is taken (or already held by this job), else the number of jobs in flight.
_RESERVE = """
local now = tonumber(ARGV[3])
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local status = redis.call('HGET', ARGV[4] .. id, 'status')
  if status == 'succeeded' or status == 'failed' or status == 'canceled' then
    redis.call('ZREM', KEYS[1], id)
  elseif not status and tonumber(redis.call('ZSCORE', KEYS[1], id)) < now - tonumber(ARGV[5]) then
    redis.call('ZREM', KEYS[1], id)
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return n end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return 0
"""

# KEYS: a lease or claim key. ARGV: token, ttl s. Takes it when free; 1 when this holder has it afterwards.
_TAKE = """
local cur = redis.call('GET', KEYS[1])
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]); return 1 end
if cur == ARGV[1] then return 1 end
return 0
"""
# KEYS: lease or claim keys. ARGV: token, ttl s. Extends each key only while this holder owns it.
_RENEW = """
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('EXPIRE', k, ARGV[2]); n = n + 1 end
end
return n
"""
# KEYS: a lease or claim key. ARGV: token. Drops it only while this holder owns it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: claim key, result key. ARGV: token, result json, result ttl. Leaves the result, drops the claim.
_PUBLISH = """
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
# KEYS: Kombu's unacked index, the lease. ARGV: delivery tag ("" = none), now, token, ttl s.
# Refreshes the message's delivery time if it is still unacknowledged (XX), renews the lease or takes it
# back if it lapsed. Returns 1 while this holder has the lease, 0 when another one took it.
_BEAT = """
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1]) end
local cur = redis.call('GET', KEYS[2])
if cur == ARGV[3] then redis.call('EXPIRE', KEYS[2], ARGV[4]); return 1 end
if not cur then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]); return 1 end
return 0
"""
# KEYS: the window's counter. ARGV: window seconds, requests to add. Returns the count including them.
_HIT = """
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if n == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1] + 1) end
return n
"""


def _encode(job: Job) -> dict[str, str]:
    dumped = job.model_dump(mode="json")
    return {k: (str(v) if k in _SCALARS else json.dumps(v)) for k, v in dumped.items()}


def _decode(raw: dict[bytes, bytes]) -> Job:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    data: dict[str, Any] = {k: (fields[k] if k in _SCALARS else json.loads(fields[k])) for k in fields}
    return Job.model_validate(data)


def _events(rows: list) -> list[Event]:
    return [Event(id=i.decode(), event=f[b"event"].decode(), data=json.loads(f[b"data"])) for i, f in rows]


def _task_job_id(raw: bytes, task_name: str) -> str | None:
    """The job id a Kombu message (JSON envelope, body base64 or not) carries for `task_name`, else None."""
    try:
        msg = json.loads(raw)
        if msg.get("headers", {}).get("task") != task_name:
            return None
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args and isinstance(args[0], str) else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _holder_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


class RedisLease:
    """A job lease (`Lease`) held in one Redis key with a TTL."""

    def __init__(self, system: "RedisJobSystem", job_id: str, ttl_s: int):
        self._s = system
        self.key = system.keys.lease(job_id)
        self.ttl_s = ttl_s
        self.token = _holder_token()

    def acquire(self) -> bool:
        return bool(self._s.r.set(self.key, self.token, nx=True, ex=self.ttl_s))

    def holder(self) -> str | None:
        raw = self._s.r.get(self.key)
        return raw.decode() if raw is not None else None

    def renew(self) -> bool:
        return bool(self._s._renew(keys=[self.key], args=[self.token, self.ttl_s]))

    def release(self) -> None:
        self._s._release(keys=[self.key], args=[self.token])


class RedisHeartbeat:
    """A daemon thread that, every `interval_s`, renews the lease and refreshes the message's unacked score."""

    def __init__(self, system: "RedisJobSystem", lease: RedisLease, interval_s: float,
                 delivery_tag: str | None):
        self._s = system
        self.lease = lease
        self.interval_s = interval_s
        self.delivery_tag = delivery_tag or ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{lease.key}", daemon=True)
        self.beats = 0

    def beat(self) -> None:
        held = self._s._beat(keys=[self._s.keys.unacked_index, self.lease.key],
                             args=[self.delivery_tag, time.time(), self.lease.token, self.lease.ttl_s])
        if not held:
            log.error("job lease %s is held by %s; another worker may run this job",
                      self.lease.key, self.lease.holder())
        self.beats += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except redis.RedisError as e:  # Redis restarting: keep trying; the job itself goes on
                log.warning("heartbeat for %s failed: %s", self.lease.key, type(e).__name__)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)


class RedisBatchClaims:
    """`BatchClaims` on Redis: a claim key per job (SET NX with a TTL) and a result key once it is done."""

    def __init__(self, system: "RedisJobSystem", lease_s: int, result_ttl_s: int = 3600):
        self._s = system
        self.lease_s = lease_s
        self.result_ttl_s = result_ttl_s
        self.token = uuid.uuid4().hex

    def claim(self, job_id: str) -> bool:
        return bool(self._s._take(keys=[self._s.keys.claim(job_id)], args=[self.token, self.lease_s]))

    def renew(self, job_ids: list[str]) -> None:
        if job_ids:
            self._s._renew(keys=[self._s.keys.claim(j) for j in job_ids], args=[self.token, self.lease_s])

    def release(self, job_id: str) -> None:
        self._s._release(keys=[self._s.keys.claim(job_id)], args=[self.token])

    def holder(self, job_id: str) -> str | None:
        raw = self._s.r.get(self._s.keys.claim(job_id))
        return raw.decode() if raw is not None else None

    def publish(self, job_id: str, result: dict[str, Any]) -> None:
        self._s._publish(keys=[self._s.keys.claim(job_id), self._s.keys.claim_result(job_id)],
                         args=[self.token, json.dumps(result), self.result_ttl_s])

    def wait_for_holder(self, job_id: str, poll_s: float = 0.5) -> dict[str, Any] | None:
        while True:
            pipe = self._s.r.pipeline(transaction=False)
            pipe.get(self._s.keys.claim_result(job_id))
            pipe.get(self._s.keys.claim(job_id))
            raw, holder = pipe.execute()
            if raw is not None:
                return json.loads(raw)
            if holder is None or holder == self.token.encode():
                return None
            time.sleep(poll_s)


class RedisInFlight:
    """`InFlightSlots` on Redis: a sorted set of job ids per owner and type (see `_RESERVE`)."""

    def __init__(self, system: "RedisJobSystem", grace_s: float = 120.0):
        self._s = system
        self.grace_s = grace_s

    def reserve(self, owner: str, job_type: JobType | str, job_id: str, limit: int) -> int | None:
        n = self._s._reserve(keys=[self._s.keys.in_flight(owner, job_type)],
                             args=[job_id, limit, time.time(), self._s.keys.job(""), self.grace_s])
        return None if n == 0 else int(n)

    def release(self, owner: str, job_type: JobType | str, job_id: str) -> None:
        self._s.r.zrem(self._s.keys.in_flight(owner, job_type), job_id)

    def count(self, owner: str, job_type: JobType | str) -> int:
        return int(self._s.r.zcard(self._s.keys.in_flight(owner, job_type)))


class RedisJobSystem(RedisLifecycle):
    """`JobSystem` on one Redis server, with Celery (Kombu's Redis transport) as the queue. The data
    lifecycle's keys (deletion, storage use, recovery marker, webhook outbox) are in services/jobs/redis_lifecycle.py."""

    def __init__(self, client: redis.Redis, prefix: str = "detbooth", ttl_s: int = 7 * 24 * 3600,
                 events_maxlen: int = 1000, *, celery: Celery | None = None, celery_keyprefix: str | None = None):
        self.r = client
        self.keys = Keys(prefix, celery_keyprefix)
        self.ttl_s = ttl_s
        self.events_maxlen = events_maxlen
        self.celery = celery
        self.stats = JobStats(client, prefix)
        self.inflight = RedisInFlight(self)
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._delete = client.register_script(_DELETE)
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._publish = client.register_script(_PUBLISH)
        self._beat = client.register_script(_BEAT)
        self._hit = client.register_script(_HIT)
        self._reserve = client.register_script(_RESERVE)
        self.init_lifecycle()

    @classmethod
    def from_settings(cls, settings: JobSettings, *, celery: Celery | None = None) -> "RedisJobSystem":
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=15, socket_connect_timeout=2,
                                      health_check_interval=10)
        system = cls(client, prefix=settings.key_prefix, ttl_s=settings.job_ttl_s,
                     events_maxlen=settings.events_maxlen, celery=celery,
                     celery_keyprefix=settings.celery_keyprefix)
        system.webhooks.progress_interval_s = settings.webhook_progress_interval_s
        return system

    # create / read -----------------------------------------------------------------------------------
    def create(self, job_type: JobType, owner: str, spec: dict[str, Any], *, job_id: str | None = None,
               idempotency_key: str | None = None, fingerprint: str = "") -> tuple[Job, bool]:
        job = Job(id=job_id or new_job_id(), type=job_type, owner=owner, created_at=utcnow(), spec=spec)
        k = self.keys
        idem = k.idempotency(owner, idempotency_key) if idempotency_key else ""
        flat = [x for kv in _encode(job).items() for x in kv]
        event = json.dumps({"status": job.status.value})
        score = int(job.created_at.timestamp() * 1_000_000)
        res = self._create(
            keys=[k.job(job.id), k.owner_jobs(owner), idem, k.events(job.id)],
            args=[job.id, score, f"{job.id}|{fingerprint}", self.ttl_s, self.events_maxlen, event, *flat],
        )
        if res[0] == 0:
            return job, True
        earlier_id, _, earlier_fp = res[1].decode().partition("|")
        if earlier_fp != fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was already used with a different request; use a new key")
        return self.get(earlier_id), False

    def idempotent_job_id(self, owner: str, idempotency_key: str) -> str | None:
        raw = self.r.get(self.keys.idempotency(owner, idempotency_key))
        return raw.decode().partition("|")[0] if raw else None

    def get(self, job_id: str) -> Job:
        raw = self.r.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return _decode(raw)

    def get_owned(self, job_id: str, owner: str) -> Job:
        job = self.get(job_id)
        if job.owner != owner:
            raise JobNotFound(job_id)
        return job

    def list_jobs(self, owner: str, limit: int = 20, cursor: str | None = None,
                  job_type: JobType | None = None) -> tuple[list[Job], str | None]:
        top = f"({cursor}" if cursor else "+inf"
        index = self.keys.owner_jobs(owner)
        jobs: list[Job] = []
        while True:
            rows = self.r.zrevrangebyscore(index, top, "-inf", start=0, num=limit, withscores=True)
            if not rows:
                return jobs, None
            pipe = self.r.pipeline()
            for job_id, _ in rows:
                pipe.hgetall(self.keys.job(job_id.decode()))
            for (job_id, score), raw in zip(rows, pipe.execute()):
                top = f"({int(score)}"
                if not raw:  # expired: drop it from the index
                    self.r.zrem(index, job_id)
                    continue
                job = _decode(raw)
                if job_type is None or job.type == job_type:
                    jobs.append(job)
                if len(jobs) == limit:
                    return jobs, top[1:]

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        k = self.keys
        self._delete(keys=[k.job(job_id), k.events(job_id), k.owner_jobs(job.owner),
                           k.in_flight(job.owner, job.type)], args=[job_id])

    # status changes ------------------------------------------------------------------------------------
    def _run_update(self, job_id: str, *, allowed: Iterable[JobStatus] | None, new: JobStatus | None,
                    fields: dict[str, Any], event: str = "", event_data: dict[str, Any] | None = None,
                    incr_attempts: bool = False) -> JobStatus:
        flat: list[str] = []
        for key, v in fields.items():
            flat += [key, v if isinstance(v, str) and key in _SCALARS else json.dumps(v)]
        ttl = self.ttl_s if new is not None and new.terminal else 0
        res = self._update(
            keys=[self.keys.job(job_id), self.keys.events(job_id)],
            args=[",".join(s.value for s in allowed) if allowed is not None else "", new.value if new else "",
                  ttl, self.events_maxlen, event, json.dumps(event_data or {}), "1" if incr_attempts else "0",
                  self.keys.owner_prefix, *flat],
        )
        if res[0] == -1:
            raise JobNotFound(job_id)
        current = JobStatus(res[1].decode())
        if res[0] == 0:
            raise TransitionRefused(job_id, current, new)
        return current

    def transition(self, job_id: str, new: JobStatus, *, expected: Iterable[JobStatus] | None = None,
                   result: dict[str, Any] | None = None, error: JobError | None = None) -> Job:
        new = JobStatus(new)
        allowed = {s for s, targets in ALLOWED_TRANSITIONS.items() if new in targets}
        if expected is not None:
            allowed &= {JobStatus(s) for s in expected}
        if not allowed:  # nothing can become `new` (or the caller expects only statuses that cannot)
            current = JobStatus(self.get(job_id).status)
            raise TransitionRefused(job_id, current, new)
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
        self.notify_status(job, new)
        return job

    def report_progress(self, job_id: str, progress: Progress,
                        metrics: TrainingMetrics | dict[str, float] | None = None) -> None:
        """Metrics go through `TrainingMetrics`, so a value under a name no reader knows is refused here."""
        fields: dict[str, Any] = {"progress": progress.model_dump(mode="json")}
        reported = TrainingMetrics.model_validate(metrics).reported() if metrics else {}
        if reported:
            fields["metrics"] = reported
        self._run_update(job_id, allowed={JobStatus.running}, new=None, fields=fields, event="progress",
                         event_data={"progress": progress.model_dump(mode="json"), "metrics": reported})
        self.notify_progress(job_id)

    def cancel(self, job_id: str) -> Job:
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
        raw = self.r.hget(self.keys.job(job_id), "cancel_requested")
        return raw is None or raw == b"true"

    def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None, count: int = 100) -> list[Event]:
        key = self.keys.events(job_id)
        if block_ms is None:
            rows = self.r.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        else:
            got = self.r.xread({key: after}, count=count, block=min(block_ms, 10_000))
            rows = got[0][1] if got else []
        return _events(rows)

    # queue -----------------------------------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        if self.celery is None:
            raise RuntimeError("this job system was made without a Celery app: it cannot enqueue")
        self.celery.send_task(TASK_FOR_TYPE[job.type], args=[job.id], queue=QUEUE_FOR_TYPE[job.type],
                              retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                                        "interval_step": 0.5})

    def queued_job_ids(self, job_type: JobType, limit: int = 200) -> list[str]:
        raw = self.r.lrange(self.keys.queue(QUEUE_FOR_TYPE[job_type]), -limit, -1)
        ids = (_task_job_id(m, TASK_FOR_TYPE[job_type]) for m in reversed(raw))  # consumers pop from the right
        return list(dict.fromkeys(i for i in ids if i is not None))

    def queue_depth(self, job_type: JobType) -> int:
        return int(self.r.llen(self.keys.queue(QUEUE_FOR_TYPE[job_type])))

    # workers -----------------------------------------------------------------------------------------------
    def lease(self, job_id: str, ttl_s: int) -> RedisLease:
        return RedisLease(self, job_id, ttl_s)

    def heartbeat(self, lease: RedisLease, interval_s: float, delivery_tag: str | None) -> RedisHeartbeat:
        return RedisHeartbeat(self, lease, interval_s, delivery_tag)

    def batch_claims(self, lease_s: int, result_ttl_s: int = 3600) -> RedisBatchClaims:
        return RedisBatchClaims(self, lease_s, result_ttl_s)

    # counters ----------------------------------------------------------------------------------------------
    def hit_rate(self, owner: str, limit: int, window_s: int = 60) -> RateDecision:
        now = time.time()
        window = int(now // window_s)
        count = int(self._hit(keys=[self.keys.rate(owner, window)], args=[window_s, 1]))
        retry = max(1, int((window + 1) * window_s - now) + 1)
        return RateDecision(allowed=count <= limit, count=count, limit=limit, retry_after_s=retry)

    def active_count(self, owner: str, job_type: JobType) -> int:
        return self.inflight.count(owner, job_type)

    # models ------------------------------------------------------------------------------------------------
    def register_model(self, owner: str, model_id: str, info: dict[str, Any]) -> None:
        now = utcnow()
        info = {"created_at": now.isoformat(), **info}
        pipe = self.r.pipeline()  # MULTI/EXEC: both or neither
        pipe.hset(self.keys.model(model_id), mapping={"owner": owner, "info": json.dumps(info)})
        pipe.zadd(self.keys.owner_models(owner), {model_id: now.timestamp()})
        pipe.execute()

    def get_model(self, model_id: str, owner: str) -> dict[str, Any]:
        raw = self.r.hgetall(self.keys.model(model_id))
        if not raw or raw[b"owner"].decode() != owner:
            raise JobNotFound(model_id)
        return json.loads(raw[b"info"])

    def list_models(self, owner: str) -> list[dict[str, Any]]:
        """The owner's models, newest first; `created_at` is when the model was registered."""
        rows = [(i.decode(), score) for i, score in self.r.zrevrange(self.keys.owner_models(owner), 0, -1,
                                                                      withscores=True)]
        pipe = self.r.pipeline()
        for i, _ in rows:
            pipe.hget(self.keys.model(i), "info")
        return [{"id": i, "created_at": datetime.fromtimestamp(score, UTC).isoformat(), **json.loads(info)}
                for (i, score), info in zip(rows, pipe.execute()) if info]

    def ping(self) -> bool:
        return bool(self.r.ping())


class AsyncRedisJobSystem:
    """`AsyncJobSystem` on `redis.asyncio`: waiting on a job's stream holds a connection, never a thread.

    Blocking stream reads get their own connection pool (`max_waiting` connections), so the gateway's event
    readers never keep a short `GET /jobs/{id}` from getting a connection. Connecting may take a while on a
    busy host (a burst of new streams): the connect timeout is generous.
    """

    def __init__(self, url: str, keys: Keys, *, max_waiting: int = 4096, max_connections: int = 256):
        self.keys = keys
        # blocking pools: past `max_connections` a caller waits (up to `timeout`) for a connection to come back
        # instead of failing at once
        self.r = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10, socket_connect_timeout=10, socket_timeout=15,
            health_check_interval=10))
        # socket_timeout must outlast the longest XREAD BLOCK (10 s)
        self.blocking = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_waiting, timeout=30, socket_connect_timeout=10, socket_timeout=20))
        self._hit = self.r.register_script(_HIT)

    @classmethod
    def from_settings(cls, settings: JobSettings, **kw: Any) -> "AsyncRedisJobSystem":
        return cls(settings.redis_url, Keys(settings.key_prefix, settings.celery_keyprefix), **kw)

    async def get(self, job_id: str) -> Job:
        raw = await self.r.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return _decode(raw)

    async def get_owned(self, job_id: str, owner: str) -> Job:
        job = await self.get(job_id)
        if job.owner != owner:
            raise JobNotFound(job_id)
        return job

    async def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
                     count: int = 100) -> list[Event]:
        key = self.keys.events(job_id)
        if block_ms is None:
            rows = await self.r.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        else:
            got = await self.blocking.xread({key: after}, count=count, block=min(block_ms, 10_000))
            rows = got[0][1] if got else []
        return _events(rows)

    async def wait_finished(self, job_id: str, timeout_s: float) -> Job:
        deadline = time.monotonic() + timeout_s
        last = "0-0"
        job = await self.get(job_id)
        while not job.status.terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            events = await self.events(job_id, after=last, block_ms=max(1, int(min(left, 5) * 1000)))
            if events:
                last = events[-1].id
            job = await self.get(job_id)
        return job

    async def add_rate(self, owner: str, window: int, requests: int, window_s: int = 60) -> int:
        return int(await self._hit(keys=[self.keys.rate(owner, window)], args=[window_s, requests]))

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def aclose(self) -> None:
        for client in (self.r, self.blocking):
            await client.aclose()
            await client.connection_pool.disconnect()  # a pool passed in is not closed with its client
