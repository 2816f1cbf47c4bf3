"""The Redis side of the data lifecycle: deletion tombstones, per-owner storage use, the recovery marker,
locks, model unregistration, and the webhook outbox. Part of the job system's Redis adapter, mixed into its
class; its key names are in services/jobs/keys.py with the adapter's others.

Used by services/jobs/deletion.py, sweeper.py, reindex.py and webhooks.py through the adapter's methods.
"""

import json
import logging
import os
import socket
import time
import uuid
from datetime import datetime
from typing import Any

import redis

from services.jobs.keys import Keys
from services.jobs.webhooks import WebhookEvent, emit

log = logging.getLogger(__name__)

# KEYS: tombstones, the owner's storage hash, job -> owner. ARGV: job id, bytes, owner.
_RECORD_STORAGE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
"""


class RedisLifecycle:
    """Mixed into the adapter's class, which provides `self.r` (a redis.Redis)."""

    r: redis.Redis
    keys: Keys

    def init_lifecycle(self, progress_interval_s: float = 10.0) -> None:
        self.webhooks = RedisWebhookOutbox(self, progress_interval_s)
        self._record_storage = self.r.register_script(_RECORD_STORAGE)

    # data lifecycle (services/jobs/deletion.py, sweeper.py, reindex.py) ------------------------------------
    def unregister_model(self, model_id: str) -> str | None:
        """Remove a model's registration; its owner, or None when there was none."""
        owner = self.model_owner(model_id)
        pipe = self.r.pipeline()
        pipe.delete(self.keys.model(model_id))
        if owner is not None:
            pipe.zrem(self.keys.owner_models(owner), model_id)
        pipe.execute()
        return owner

    def model_owner(self, model_id: str) -> str | None:
        raw = self.r.hget(self.keys.model(model_id), "owner")
        return raw.decode() if raw is not None else None

    def mark_deleted(self, job_id: str) -> None:
        self.r.zadd(self.keys.deleted, {job_id: time.time()})

    def is_deleted(self, job_id: str) -> bool:
        return self.r.zscore(self.keys.deleted, job_id) is not None

    def deleted_ids(self) -> set[str]:
        return {i.decode() for i in self.r.zrange(self.keys.deleted, 0, -1)}

    def forget_deleted(self, older_than: float) -> None:
        self.r.zremrangebyscore(self.keys.deleted, "-inf", older_than)

    def live_ids(self, job_ids: list[str]) -> set[str]:
        """Which of `job_ids` still have a job record or a registered model."""
        pipe = self.r.pipeline(transaction=False)
        for i in job_ids:
            pipe.exists(self.keys.job(i), self.keys.model(i))
        return {i for i, n in zip(job_ids, pipe.execute()) if n}

    def record_storage(self, owner: str, job_id: str, nbytes: int) -> bool:
        """Count a job's bytes for its owner; refused (False) once the job is deleted. In one script with the
        tombstone check: a worker that measured its files just before a deletion would otherwise count them
        again after `drop_storage`, for good."""
        keys = [self.keys.deleted, self.keys.owner_storage(owner), self.keys.storage_owner]
        return bool(self._record_storage(keys=keys, args=[job_id, int(nbytes), owner]))

    def drop_storage(self, job_id: str) -> None:
        owner = self.r.hget(self.keys.storage_owner, job_id)
        pipe = self.r.pipeline()
        if owner is not None:
            pipe.hdel(self.keys.owner_storage(owner.decode()), job_id)
        pipe.hdel(self.keys.storage_owner, job_id)
        pipe.execute()

    def storage_used(self, owner: str) -> int:
        return sum(int(v) for v in self.r.hvals(self.keys.owner_storage(owner)))

    def is_indexed(self) -> bool:
        return bool(self.r.exists(self.keys.indexed))

    def mark_indexed(self) -> None:
        self.r.set(self.keys.indexed, datetime.now().isoformat())

    def try_lock(self, name: str, ttl_s: int) -> bool:
        return bool(self.r.set(self.keys.lock(name), _holder_token(), nx=True, ex=ttl_s))

    def persistence(self) -> dict[str, str] | None:
        """Redis' `appendonly` and `save` settings; None when CONFIG is not allowed (managed Redis)."""
        try:
            got = {**self.r.config_get("appendonly"), **self.r.config_get("save")}
        except redis.ResponseError:
            return None
        return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in got.items()}

    # webhooks: the adapter calls these after each status change and each progress report
    def notify_status(self, job: Any, new: Any) -> None:
        if new == "running":
            emit(self.webhooks, job, WebhookEvent.start)
        elif new in ("succeeded", "failed", "canceled"):
            emit(self.webhooks, job, WebhookEvent.completed)

    def notify_progress(self, job_id: str) -> None:
        """A `progress` webhook for jobs that asked for one (reads only the spec first: this runs every step)."""
        try:
            spec = self.r.hget(self.keys.job(job_id), "spec")
            if spec is None or b'"webhook"' not in spec or b'"progress"' not in spec:
                return
            emit(self.webhooks, self.get(job_id), WebhookEvent.progress)
        except Exception:
            log.warning("progress webhook of job %s not queued", job_id, exc_info=True)

    def webhook_outbox(self, progress_interval_s: float = 10.0) -> "RedisWebhookOutbox":
        return RedisWebhookOutbox(self, progress_interval_s)


# KEYS: due zset. ARGV: now, claim-until, max count. Claims due deliveries by pushing their due time out.
_WEBHOOK_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


class RedisWebhookOutbox:
    """Webhook deliveries waiting to be sent (services/jobs/webhooks.py): a hash per delivery and one sorted
    set of delivery ids by due time; a claim pushes the due time out by a lease, so a dispatcher that dies
    mid-delivery lets another send it again."""

    def __init__(self, system: RedisLifecycle, progress_interval_s: float = 10.0, keep_s: int = 3 * 24 * 3600):
        self.r, self.keys = system.r, system.keys
        self.progress_interval_s = progress_interval_s
        self.keep_s = keep_s
        self._claim = self.r.register_script(_WEBHOOK_CLAIM)

    def put(self, url: str, payload: dict[str, Any], *, job_id: str = "", due: float | None = None) -> str:
        delivery_id = f"msg_{uuid.uuid4().hex}"
        key = self.keys.webhook(delivery_id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={"url": url, "body": json.dumps(payload, separators=(",", ":")), "attempts": 0,
                                "job_id": job_id, "type": payload.get("type", "")})
        pipe.expire(key, self.keep_s)
        pipe.zadd(self.keys.webhooks_due, {delivery_id: time.time() if due is None else due})
        pipe.execute()
        return delivery_id

    def progress_allowed(self, job_id: str) -> bool:
        """At most one `progress` delivery per job per `progress_interval_s`."""
        if self.progress_interval_s <= 0:
            return True
        ms = max(1, int(self.progress_interval_s * 1000))
        return bool(self.r.set(self.keys.webhook_progress(job_id), "1", nx=True, px=ms))

    def claim(self, *, lease_s: float, limit: int = 16) -> list[dict[str, Any]]:
        """Due deliveries, each now held for `lease_s` (due again after that unless settled)."""
        now = time.time()
        ids = [i.decode() for i in self._claim(keys=[self.keys.webhooks_due], args=[now, now + lease_s, limit])]
        out = []
        for delivery_id in ids:
            raw = self.r.hgetall(self.keys.webhook(delivery_id))
            if not raw:  # expired or settled meanwhile
                self.r.zrem(self.keys.webhooks_due, delivery_id)
                continue
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            out.append({"id": delivery_id, **fields, "attempts": int(fields.get("attempts", 0))})
        return out

    def settle(self, delivery_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.zrem(self.keys.webhooks_due, delivery_id)
        pipe.delete(self.keys.webhook(delivery_id))
        pipe.execute()

    def retry_at(self, delivery_id: str, when: float) -> int:
        pipe = self.r.pipeline()
        pipe.hincrby(self.keys.webhook(delivery_id), "attempts", 1)
        pipe.zadd(self.keys.webhooks_due, {delivery_id: when})
        return int(pipe.execute()[0])

    def pending(self) -> int:
        return int(self.r.zcard(self.keys.webhooks_due))


def _holder_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
