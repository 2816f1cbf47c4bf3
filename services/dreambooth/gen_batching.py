"""Claims that let one worker run other queued generate jobs of the same shape in its pipeline call.

A worker that batches claims each job it takes (`<prefix>:gen:claim:<job id>`, a short lease it renews every
step) and moves it to `running`. The job's own Celery message stays in the broker, so nothing is lost if that
worker dies: when the message reaches a worker, that worker waits while a live lease exists and returns the
result the holder published (`<prefix>:gen:result:<job id>`), or runs the job itself once the lease
has lapsed.
"""

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis

from services.jobs.tasks import GENERATE_TASK


class BatchClaims:
    def __init__(self, client: redis.Redis, prefix: str, lease_s: int = 120, result_ttl_s: int = 3600):
        self.r = client
        self.prefix = prefix
        self.lease_s = lease_s
        self.result_ttl_s = result_ttl_s
        self.token = uuid.uuid4().hex

    def _claim_key(self, job_id: str) -> str:
        return f"{self.prefix}:gen:claim:{job_id}"

    def _result_key(self, job_id: str) -> str:
        return f"{self.prefix}:gen:result:{job_id}"

    def claim(self, job_id: str) -> bool:
        """Take the lease on a job; False when another worker holds it."""
        if self.r.set(self._claim_key(job_id), self.token, nx=True, ex=self.lease_s):
            return True
        return self.r.get(self._claim_key(job_id)) == self.token.encode()

    def renew(self, job_ids: list[str]) -> None:
        pipe = self.r.pipeline()
        for job_id in job_ids:
            pipe.expire(self._claim_key(job_id), self.lease_s)
        pipe.execute()

    def release(self, job_id: str) -> None:
        if self.r.get(self._claim_key(job_id)) == self.token.encode():
            self.r.delete(self._claim_key(job_id))

    def publish(self, job_id: str, result: dict[str, Any]) -> None:
        """Leave the result for a worker that got this job's message meanwhile, then drop the lease."""
        self.r.set(self._result_key(job_id), json.dumps(result), ex=self.result_ttl_s)
        self.release(job_id)

    def wait_for_holder(self, job_id: str, poll_s: float = 0.5) -> dict[str, Any] | None:
        """The result another worker made for this job (waiting while its lease lives); None: run it here."""
        while True:
            raw = self.r.get(self._result_key(job_id))
            if raw is not None:
                return json.loads(raw)
            holder = self.r.get(self._claim_key(job_id))
            if holder is None or holder == self.token.encode():
                return None
            time.sleep(poll_s)


def queued_generate_job_ids(client: redis.Redis, queue_key: str, limit: int = 200) -> Iterator[str]:
    """Job ids of generate tasks waiting in the Celery Redis queue, oldest first (read only)."""
    for raw in reversed(client.lrange(queue_key, -limit, -1)):  # consumers pop from the right end
        try:
            msg = json.loads(raw)
            if msg.get("headers", {}).get("task") != GENERATE_TASK:
                continue
            body = msg["body"]
            if msg.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            if args and isinstance(args[0], str):
                yield args[0]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
