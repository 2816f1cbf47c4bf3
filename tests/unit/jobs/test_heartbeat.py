"""A task's lease around its body: a delivery of a job leased by another live worker is retried, not run.
(The lease and heartbeat themselves are in the job-system contract tests, test_job_system.py.)"""

import pytest
from celery.exceptions import Retry

from services.contracts.jobs import JobStatus, JobType
from services.jobs.lifecycle import run_task
from services.jobs.redis_system import RedisJobSystem
from services.jobs.settings import JobSettings


class _Task:
    def __init__(self):
        self.request = type("Request", (), {"delivery_info": {"delivery_tag": "t"}})()

    def retry(self, countdown, max_retries):
        return Retry("again", when=countdown)


def test_a_job_leased_elsewhere_is_retried_not_run(redis_server, key_prefix):
    settings = JobSettings(redis_url=redis_server, key_prefix=key_prefix, visibility_timeout_s=10,
                           task_heartbeat_s=1, job_lease_s=5)
    store = RedisJobSystem.from_settings(settings)
    job, _ = store.create(JobType.generate, "o", {})
    other = store.lease(job.id, ttl_s=5)
    assert other.acquire()
    ran = []
    with pytest.raises(Retry):
        run_task(_Task(), store, settings, job.id, lambda j: ran.append(1) or {})
    assert not ran and store.get(job.id).status == JobStatus.queued
    other.release()
    run_task(_Task(), store, settings, job.id, lambda j: ran.append(1) or {"ok": True})
    assert ran == [1] and store.get(job.id).status == JobStatus.succeeded
    assert store.lease(job.id, ttl_s=5).holder() is None  # released when the task ended


@pytest.mark.parametrize("kw", [{"visibility_timeout_s": 10, "task_heartbeat_s": 5},
                                {"visibility_timeout_s": 10, "job_lease_s": 20},
                                {"task_heartbeat_s": 5, "job_lease_s": 6}])
def test_settings_refuse_a_heartbeat_that_cannot_keep_up(kw):
    with pytest.raises(ValueError):
        JobSettings(**kw)
