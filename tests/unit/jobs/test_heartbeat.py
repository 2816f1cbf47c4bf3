"""The task heartbeat: it keeps a live task's message fresh in kombu's unacked index and holds the job lease."""

import time
import uuid

import pytest
from celery.exceptions import Retry

from services.contracts.jobs import JobStatus, JobType
from services.jobs.heartbeat import JobLease, TaskHeartbeat, lease_key, unacked_index_key
from services.jobs.lifecycle import run_task
from services.jobs.settings import JobSettings
from services.jobs.store import JobStore


@pytest.fixture
def prefix(redis_client):
    p = f"hb{uuid.uuid4().hex[:8]}"
    yield p
    keys = list(redis_client.scan_iter(f"{p}:*"))
    if keys:
        redis_client.delete(*keys)


def test_lease_is_exclusive_and_released_only_by_its_holder(redis_client, prefix):
    a = JobLease(redis_client, prefix, "j1", ttl_s=5)
    b = JobLease(redis_client, prefix, "j1", ttl_s=5)
    assert a.acquire() and not b.acquire()
    b.release()  # not the holder: no effect
    assert a.holder() == a.token and not b.renew() and a.renew()
    a.release()
    assert b.acquire()


def test_heartbeat_refreshes_only_an_unacknowledged_tag(redis_client, prefix):
    index = unacked_index_key(f"{prefix}:celery:")
    redis_client.zadd(index, {"tag-1": 1000.0})
    lease = JobLease(redis_client, prefix, "j1", ttl_s=3)
    assert lease.acquire()
    with TaskHeartbeat(redis_client, lease, 0.2, unacked_index=index, delivery_tag="tag-1") as hb:
        time.sleep(0.7)
        assert redis_client.zscore(index, "tag-1") > time.time() - 2
        redis_client.zrem(index, "tag-1")  # acknowledged
        time.sleep(0.5)
        assert redis_client.zscore(index, "tag-1") is None  # ZADD XX never brings it back
        assert hb.beats >= 2
    assert redis_client.ttl(lease_key(prefix, "j1")) > 0


class _Task:
    def __init__(self):
        self.request = type("Request", (), {"delivery_info": {"delivery_tag": "t"}})()

    def retry(self, countdown, max_retries):
        return Retry("again", when=countdown)


def test_a_job_leased_elsewhere_is_retried_not_run(redis_client, prefix):
    settings = JobSettings(key_prefix=prefix, visibility_timeout_s=10, task_heartbeat_s=1, job_lease_s=5)
    store = JobStore(redis_client, prefix=prefix)
    job, _ = store.create(JobType.generate, "o", {})
    other = JobLease(redis_client, prefix, job.id, ttl_s=5)
    assert other.acquire()
    ran = []
    with pytest.raises(Retry):
        run_task(_Task(), store, settings, job.id, lambda j: ran.append(1) or {})
    assert not ran and store.get(job.id).status == JobStatus.queued
    other.release()
    run_task(_Task(), store, settings, job.id, lambda j: ran.append(1) or {"ok": True})
    assert ran == [1] and store.get(job.id).status == JobStatus.succeeded
    assert redis_client.get(lease_key(prefix, job.id)) is None


@pytest.mark.parametrize("kw", [{"visibility_timeout_s": 10, "task_heartbeat_s": 5},
                                {"visibility_timeout_s": 10, "job_lease_s": 20},
                                {"task_heartbeat_s": 5, "job_lease_s": 6}])
def test_settings_refuse_a_heartbeat_that_cannot_keep_up(kw):
    with pytest.raises(ValueError):
        JobSettings(**kw)
