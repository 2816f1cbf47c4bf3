"""Keeps a running task's Celery message invisible, and its job leased to this worker, for as long as it runs.

Kombu's Redis transport delivers an unacknowledged message again once its score in the unacked index
(`<global_keyprefix>unacked_index`, the delivery time) is older than `visibility_timeout`. Celery's prefork
children die with their parent, so when a worker's *main* process is killed nobody rejects the message: it
is only delivered again after `visibility_timeout`. A heartbeat thread in the task process therefore moves
the score of its own delivery tag to "now" every `task_heartbeat_s` (ZADD XX: an acknowledged message is never
brought back), which lets `visibility_timeout` be short (a minute) without a live task ever being delivered
twice; a dead worker's task is delivered again within about `visibility_timeout + unacked_restore_interval`.

The same heartbeat renews a per-job lease (`<prefix>:job:<id>:lease`, SET NX with a TTL, like the batching
claims in services/dreambooth/gen_batching.py). A delivery that finds the lease held by another live worker
does not run the job: the task is retried later, so a job is neither run twice nor lost.
"""

import logging
import os
import socket
import threading
import time
import uuid
from typing import Self

import redis

log = logging.getLogger(__name__)

# KEYS: lease key. ARGV: token, ttl s. Extends the lease only while this holder owns it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease key. ARGV: token. Drops the lease only while this holder owns it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:job:{job_id}:lease"


def unacked_index_key(celery_keyprefix: str) -> str:
    """Kombu's sorted set of delivered, unacknowledged messages (scored by delivery time)."""
    return f"{celery_keyprefix}unacked_index"


class JobLease:
    """One worker's exclusive, expiring hold on a job."""

    def __init__(self, client: redis.Redis, prefix: str, job_id: str, ttl_s: int):
        self.r = client
        self.key = lease_key(prefix, job_id)
        self.ttl_s = ttl_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        return bool(self.r.set(self.key, self.token, nx=True, ex=self.ttl_s))

    def holder(self) -> str | None:
        raw = self.r.get(self.key)
        return raw.decode() if raw is not None else None

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_s]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])


class TaskHeartbeat:
    """A daemon thread that, every `interval_s`, renews the lease and refreshes the message's unacked score."""

    def __init__(self, client: redis.Redis, lease: JobLease, interval_s: float, *,
                 unacked_index: str | None = None, delivery_tag: str | None = None):
        self.r = client
        self.lease = lease
        self.interval_s = interval_s
        self.unacked_index = unacked_index
        self.delivery_tag = delivery_tag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{lease.key}", daemon=True)
        self.beats = 0

    def beat(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        if self.unacked_index and self.delivery_tag:
            pipe.zadd(self.unacked_index, {self.delivery_tag: time.time()}, xx=True)
        pipe.execute()
        # a lapsed lease (e.g. Redis was down longer than the lease) is taken back if nobody else took it
        if not self.lease.renew() and not self.lease.acquire():
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
