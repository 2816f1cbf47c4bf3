import threading

import pytest
import redis

from services.contracts.jobs import JobError, JobStatus, JobType, Progress
from services.jobs.store import IdempotencyConflict, JobNotFound, JobStore, TransitionRefused


@pytest.fixture
def store(redis_server, key_prefix) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_server), prefix=key_prefix, ttl_s=100, events_maxlen=50)


def new(store: JobStore, owner: str = "alice", **kw):
    job, created = store.create(JobType.generate, owner, {"params": {"prompt": "x"}}, **kw)
    assert created
    return job


def test_happy_path_transitions_set_times_and_attempts(store):
    job = new(store)
    assert job.status == JobStatus.queued and job.attempts == 0
    running = store.transition(job.id, JobStatus.running)
    assert running.started_at is not None and running.attempts == 1
    done = store.transition(job.id, JobStatus.succeeded, result={"images": []})
    assert done.status == JobStatus.succeeded and done.finished_at is not None
    assert done.result == {"images": []}


@pytest.mark.parametrize("path,bad", [
    ([], JobStatus.succeeded),                       # queued -> succeeded skips running
    ([], JobStatus.failed),
    ([JobStatus.running, JobStatus.failed], JobStatus.running),  # finished jobs never move again
    ([JobStatus.canceled], JobStatus.queued),
])
def test_disallowed_transitions_are_refused_and_change_nothing(store, path, bad):
    job = new(store)
    for s in path:
        store.transition(job.id, s)
    before = store.get(job.id)
    with pytest.raises(TransitionRefused):
        store.transition(job.id, bad)
    assert store.get(job.id) == before


def test_redelivery_moves_running_back_to_queued(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    store.transition(job.id, JobStatus.queued, expected={JobStatus.running})
    again = store.transition(job.id, JobStatus.running)
    assert again.attempts == 2


def test_two_clients_racing_on_one_job_exactly_one_wins(redis_server, key_prefix):
    stores = [JobStore(redis.Redis.from_url(redis_server), prefix=key_prefix) for _ in range(2)]
    for _ in range(20):
        job = new(stores[0])
        stores[0].transition(job.id, JobStatus.running)
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def finish(store: JobStore, status: JobStatus) -> None:
            barrier.wait()
            try:
                store.transition(job.id, status, expected={JobStatus.running})
                outcomes.append(status.value)
            except TransitionRefused:
                outcomes.append("refused")

        threads = [threading.Thread(target=finish, args=(stores[0], JobStatus.succeeded)),
                   threading.Thread(target=finish, args=(stores[1], JobStatus.canceled))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes).count("refused") == 1
        winner = next(o for o in outcomes if o != "refused")
        assert stores[1].get(job.id).status.value == winner


def test_idempotency_key_returns_the_same_job(store):
    first, created = store.create(JobType.generate, "alice", {"a": 1}, idempotency_key="k1", fingerprint="f")
    again, created_again = store.create(JobType.generate, "alice", {"a": 1}, idempotency_key="k1", fingerprint="f")
    assert created and not created_again and again.id == first.id
    # the same key of another owner is another job
    other, created_other = store.create(JobType.generate, "bob", {"a": 1}, idempotency_key="k1", fingerprint="f")
    assert created_other and other.id != first.id
    with pytest.raises(IdempotencyConflict):
        store.create(JobType.generate, "alice", {"a": 2}, idempotency_key="k1", fingerprint="g")


def test_finished_jobs_expire_and_leave_the_index(store):
    store.ttl_s = 1
    job = new(store)
    store.transition(job.id, JobStatus.canceled)
    assert 0 < store.r.ttl(store._job_key(job.id)) <= 1
    store.r.delete(store._job_key(job.id))  # what expiry does, without sleeping
    assert store.list_jobs("alice")[0] == []
    assert store.r.zcard(store._owner_key("alice")) == 0
    with pytest.raises(JobNotFound):
        store.get(job.id)


def test_running_jobs_do_not_expire(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    assert store.r.ttl(store._job_key(job.id)) == -1


def test_list_is_newest_first_with_cursor_pages_and_owner_isolation(store):
    ids = [new(store).id for _ in range(5)]
    new(store, owner="bob")
    page1, cursor = store.list_jobs("alice", limit=2)
    page2, cursor2 = store.list_jobs("alice", limit=2, cursor=cursor)
    page3, cursor3 = store.list_jobs("alice", limit=2, cursor=cursor2)
    got = [j.id for j in page1 + page2 + page3]
    assert got == ids[::-1]
    assert len(page3) == 1 and cursor3 is None


def test_events_are_ordered_and_resumable(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    for step in range(1, 4):
        store.report_progress(job.id, Progress(step=step, total=3, eta_s=3 - step), {"loss": 1.0 / step})
    events = store.events(job.id)
    assert [e.event for e in events] == ["status", "status", "progress", "progress", "progress"]
    resumed = store.events(job.id, after=events[2].id)
    assert [e.data["progress"]["step"] for e in resumed] == [2, 3]
    assert store.get(job.id).progress.step == 3 and store.get(job.id).metrics == {"loss": 1 / 3}


def test_events_stream_is_bounded(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    for step in range(500):
        store.report_progress(job.id, Progress(step=step, total=500))
    assert store.r.xlen(store._events_key(job.id)) < 200


def test_progress_after_finish_is_refused(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    store.transition(job.id, JobStatus.failed, error=JobError(code="x", message="y"))
    with pytest.raises(TransitionRefused):
        store.report_progress(job.id, Progress(step=1, total=2))
    assert store.get(job.id).error == JobError(code="x", message="y")


def test_cancel_queued_is_immediate_running_is_cooperative(store):
    queued = new(store)
    assert store.cancel(queued.id).status == JobStatus.canceled
    running = new(store)
    store.transition(running.id, JobStatus.running)
    assert not store.cancel_requested(running.id)
    assert store.cancel(running.id).status == JobStatus.running
    assert store.cancel_requested(running.id)
    with pytest.raises(TransitionRefused):
        store.cancel(queued.id)


def test_models_outlive_jobs_and_are_per_owner(store):
    store.register_model("alice", "m1", {"method": "lora", "instance_prompt": "a photo of sks dog"})
    assert store.get_model("m1", "alice")["method"] == "lora"
    assert [m["id"] for m in store.list_models("alice")] == ["m1"]
    assert store.list_models("alice")[0]["created_at"].endswith("+00:00")
    assert store.list_models("bob") == []
    with pytest.raises(JobNotFound):
        store.get_model("m1", "bob")
