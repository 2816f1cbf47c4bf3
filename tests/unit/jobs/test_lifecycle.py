import pytest
import redis

from services.contracts.jobs import JobStatus, JobType
from services.jobs.lifecycle import JobCanceled, JobFailed, run_job
from services.jobs.redis_system import RedisJobSystem


@pytest.fixture
def store(redis_server, key_prefix) -> RedisJobSystem:
    return RedisJobSystem(redis.Redis.from_url(redis_server), prefix=key_prefix)


def make(store):
    return store.create(JobType.finetune, "o", {})[0]


def test_success_records_result(store):
    job = make(store)
    run_job(store, job.id, lambda j: {"model": "x"})
    done = store.get(job.id)
    assert done.status == JobStatus.succeeded and done.result == {"model": "x"} and done.attempts == 1


@pytest.mark.parametrize("exc,status,code", [
    (JobFailed("bad_input", "image 2 is too small"), JobStatus.failed, "bad_input"),
    (NotImplementedError("later"), JobStatus.failed, "not_implemented"),
    (ZeroDivisionError("boom"), JobStatus.failed, "internal_error"),
    (JobCanceled(), JobStatus.canceled, None),
])
def test_failures_are_recorded_with_a_code(store, exc, status, code):
    job = make(store)

    def body(j):
        raise exc

    run_job(store, job.id, body)
    done = store.get(job.id)
    assert done.status == status
    assert (done.error.code if done.error else None) == code


def test_redelivered_running_job_runs_again_and_counts_attempts(store):
    job = make(store)
    store.transition(job.id, JobStatus.running)  # its first worker died here
    run_job(store, job.id, lambda j: {"attempt": j.attempts})
    done = store.get(job.id)
    assert done.status == JobStatus.succeeded and done.result == {"attempt": 2}
    statuses = [e.data["status"] for e in store.events(job.id) if e.event == "status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]


def test_duplicate_delivery_of_finished_job_does_nothing(store):
    job = make(store)
    run_job(store, job.id, lambda j: {"n": 1})
    calls = []
    run_job(store, job.id, lambda j: calls.append(1) or {"n": 2})
    assert calls == [] and store.get(job.id).result == {"n": 1}
