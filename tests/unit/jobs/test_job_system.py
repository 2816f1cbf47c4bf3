"""Contract tests of the job-system interface, run against its Redis + Celery adapter and a real Redis server.

The tests speak the interface (`JobSystem`, `Lease`, `BatchClaims`, `AsyncJobSystem`); where they look at
Redis itself, they take key names from the adapter's `Keys`, never spell them out."""

import asyncio
import itertools
import threading
import time

import pytest
import redis

from services.contracts.jobs import ALLOWED_TRANSITIONS, JobError, JobStatus, JobType, Progress
from services.jobs.celery_app import make_celery
from services.jobs.interface import (
    IdempotencyConflict,
    JobNotFound,
    JobSystem,
    TransitionRefused,
)
from services.jobs.redis_system import AsyncRedisJobSystem, RedisJobSystem
from services.jobs.settings import JobSettings


@pytest.fixture
def settings(redis_server, key_prefix) -> JobSettings:
    return JobSettings(redis_url=redis_server, key_prefix=key_prefix, job_ttl_s=100, events_maxlen=50)


@pytest.fixture
def store(settings) -> RedisJobSystem:
    return RedisJobSystem.from_settings(settings, celery=make_celery(settings))


def new(store: JobSystem, owner: str = "alice", job_type: JobType = JobType.generate, **kw):
    job, created = store.create(job_type, owner, {"params": {"prompt": "x"}}, **kw)
    assert created
    return job


def at_status(store: JobSystem, status: JobStatus):
    """A fresh job in `status`, reached along allowed transitions."""
    job = new(store)
    path = {JobStatus.queued: [], JobStatus.running: [JobStatus.running],
            JobStatus.succeeded: [JobStatus.running, JobStatus.succeeded],
            JobStatus.failed: [JobStatus.running, JobStatus.failed], JobStatus.canceled: [JobStatus.canceled]}
    for s in path[status]:
        store.transition(job.id, s)
    return store.get(job.id)


# records and transitions ---------------------------------------------------------------------------------
def test_happy_path_transitions_set_times_and_attempts(store):
    job = new(store)
    assert job.status == JobStatus.queued and job.attempts == 0
    running = store.transition(job.id, JobStatus.running)
    assert running.started_at is not None and running.attempts == 1
    done = store.transition(job.id, JobStatus.succeeded, result={"images": []})
    assert done.status == JobStatus.succeeded and done.finished_at is not None
    assert done.result == {"images": []}


PAIRS = list(itertools.product(JobStatus, JobStatus))


@pytest.mark.parametrize("current,wanted", PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
def test_every_pair_of_statuses_follows_the_table(store, current, wanted):
    """Every transition outside ALLOWED_TRANSITIONS is refused and changes nothing, whatever `expected`
    the caller passes (none, the true current status, or every status); every one inside is made."""
    allowed = wanted in ALLOWED_TRANSITIONS[current]
    for expected in (None, {current}, set(JobStatus)):
        job = at_status(store, current)
        before, events_before = store.get(job.id), store.events(job.id)
        if allowed:
            assert store.transition(job.id, wanted, expected=expected).status == wanted
        else:
            with pytest.raises(TransitionRefused):
                store.transition(job.id, wanted, expected=expected)
            assert store.get(job.id) == before and store.events(job.id) == events_before


def test_expected_statuses_narrow_the_table(store):
    job = at_status(store, JobStatus.running)
    with pytest.raises(TransitionRefused):  # allowed by the table, but the caller expected `queued`
        store.transition(job.id, JobStatus.succeeded, expected={JobStatus.queued})
    assert store.get(job.id).status == JobStatus.running


def test_a_missing_job_is_not_found(store):
    with pytest.raises(JobNotFound):
        store.transition("nope", JobStatus.running)
    with pytest.raises(JobNotFound):
        store.get("nope")


def test_redelivery_moves_running_back_to_queued(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    store.transition(job.id, JobStatus.queued, expected={JobStatus.running})
    again = store.transition(job.id, JobStatus.running)
    assert again.attempts == 2


def test_two_clients_racing_on_one_job_exactly_one_wins(settings):
    stores = [RedisJobSystem.from_settings(settings) for _ in range(2)]
    for _ in range(20):
        job = new(stores[0])
        stores[0].transition(job.id, JobStatus.running)
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def finish(store: JobSystem, status: JobStatus) -> None:
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


def test_get_owned_returns_only_the_owners_job(store):
    job = new(store, owner="alice")
    assert store.get_owned(job.id, "alice") == store.get(job.id)
    for stranger in ("bob", "alic", "alice ", ""):
        with pytest.raises(JobNotFound):
            store.get_owned(job.id, stranger)
    with pytest.raises(JobNotFound):
        store.get_owned("no-such-job", "alice")


def test_idempotency_key_returns_the_same_job(store):
    first, created = store.create(JobType.generate, "alice", {"a": 1}, idempotency_key="k1", fingerprint="f")
    again, created_again = store.create(JobType.generate, "alice", {"a": 1}, idempotency_key="k1", fingerprint="f")
    assert created and not created_again and again.id == first.id
    other, created_other = store.create(JobType.generate, "bob", {"a": 1}, idempotency_key="k1", fingerprint="f")
    assert created_other and other.id != first.id
    with pytest.raises(IdempotencyConflict):
        store.create(JobType.generate, "alice", {"a": 2}, idempotency_key="k1", fingerprint="g")


def test_finished_jobs_expire_and_leave_the_index(store):
    store.ttl_s = 1
    job = new(store)
    store.transition(job.id, JobStatus.canceled)
    assert 0 < store.r.ttl(store.keys.job(job.id)) <= 1
    store.r.delete(store.keys.job(job.id))  # what expiry does, without sleeping
    assert store.list_jobs("alice")[0] == []
    assert store.r.zcard(store.keys.owner_jobs("alice")) == 0
    with pytest.raises(JobNotFound):
        store.get(job.id)


def test_running_jobs_do_not_expire(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    assert store.r.ttl(store.keys.job(job.id)) == -1


def test_delete_leaves_no_trace(store):
    job = new(store, job_type=JobType.finetune)
    assert store.inflight.reserve("alice", JobType.finetune, job.id, 5) is None
    store.delete(job.id)
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert store.list_jobs("alice")[0] == [] and store.events(job.id) == []
    assert store.active_count("alice", JobType.finetune) == 0


def test_list_is_newest_first_with_cursor_pages_and_owner_isolation(store):
    ids = [new(store).id for _ in range(5)]
    new(store, owner="bob")
    page1, cursor = store.list_jobs("alice", limit=2)
    page2, cursor2 = store.list_jobs("alice", limit=2, cursor=cursor)
    page3, cursor3 = store.list_jobs("alice", limit=2, cursor=cursor2)
    assert [j.id for j in page1 + page2 + page3] == ids[::-1]
    assert len(page3) == 1 and cursor3 is None


# events ---------------------------------------------------------------------------------------------------
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


def test_progress_metrics_under_an_unknown_name_are_refused(store):
    job = at_status(store, JobStatus.running)
    with pytest.raises(ValueError):
        store.report_progress(job.id, Progress(step=1, total=2), {"it_s": 3.0})
    store.report_progress(job.id, Progress(step=1, total=2), {"it_per_s": 3.0})
    assert store.get(job.id).metrics == {"it_per_s": 3.0}


def test_events_stream_is_bounded(store):
    job = new(store)
    store.transition(job.id, JobStatus.running)
    for step in range(500):
        store.report_progress(job.id, Progress(step=step, total=500))
    assert store.r.xlen(store.keys.events(job.id)) < 200


def test_blocking_read_returns_when_an_event_arrives(store):
    job = new(store)
    last = store.events(job.id)[-1].id
    threading.Timer(0.3, store.transition, args=(job.id, JobStatus.running)).start()
    t0 = time.monotonic()
    got = store.events(job.id, after=last, block_ms=5000)
    assert [e.data["status"] for e in got] == ["running"] and time.monotonic() - t0 < 4


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
    assert store.list_models("bob") == []
    with pytest.raises(JobNotFound):
        store.get_model("m1", "bob")


# queue ----------------------------------------------------------------------------------------------------
def test_enqueued_jobs_are_listed_oldest_first_per_queue(store):
    gens = [new(store) for _ in range(3)]
    tune = new(store, job_type=JobType.finetune)
    for job in [*gens, tune]:
        store.enqueue(job)
    assert store.queued_job_ids(JobType.generate) == [j.id for j in gens]
    assert store.queued_job_ids(JobType.finetune) == [tune.id]
    assert store.queue_depth(JobType.generate) == 3 and store.queue_depth(JobType.finetune) == 1


# leases, heartbeat, claims ------------------------------------------------------------------------------
def test_lease_is_exclusive_and_released_only_by_its_holder(store):
    a, b = store.lease("j1", ttl_s=5), store.lease("j1", ttl_s=5)
    assert a.acquire() and not b.acquire()
    b.release()  # not the holder: no effect
    assert a.holder() == a.token and not b.renew() and a.renew()
    a.release()
    assert b.acquire() and a.holder() == b.token


def test_heartbeat_keeps_the_lease_and_only_an_unacknowledged_delivery(store):
    index = store.keys.unacked_index
    store.r.zadd(index, {"tag-1": 1000.0})
    lease = store.lease("j2", ttl_s=3)
    assert lease.acquire()
    with store.heartbeat(lease, 0.2, "tag-1") as hb:
        time.sleep(0.7)
        assert store.r.zscore(index, "tag-1") > time.time() - 2
        store.r.zrem(index, "tag-1")  # acknowledged
        time.sleep(0.5)
        assert store.r.zscore(index, "tag-1") is None  # ZADD XX never brings it back
        assert hb.beats >= 2
    assert lease.holder() == lease.token and store.r.ttl(store.keys.lease("j2")) > 0


def test_heartbeat_takes_a_lapsed_lease_back_but_never_anothers(store):
    lease, other = store.lease("j3", ttl_s=3), store.lease("j3", ttl_s=3)
    hb = store.heartbeat(lease, 60, None)
    hb.beat()  # lapsed (never taken): taken back
    assert lease.holder() == lease.token
    lease.release()
    assert other.acquire()
    hb.beat()
    assert lease.holder() == other.token


def test_batch_claims_are_exclusive_renewed_and_published(store):
    a, b = store.batch_claims(lease_s=5), store.batch_claims(lease_s=5)
    assert a.claim("g1") and a.claim("g1") and not b.claim("g1")
    b.release("g1")
    assert not b.claim("g1")
    a.renew(["g1"])
    b.renew(["g1"])  # not b's: nothing happens to a's claim
    assert a.holder("g1") == a.token
    a.publish("g1", {"images": [1]})
    assert a.holder("g1") is None and b.wait_for_holder("g1") == {"images": [1]}
    assert b.claim("g2") and a.wait_for_holder("g3") is None


def test_wait_for_holder_waits_while_a_live_claim_exists(store):
    a, b = store.batch_claims(lease_s=5), store.batch_claims(lease_s=5)
    assert a.claim("g4")
    threading.Timer(0.4, a.publish, args=("g4", {"done": True})).start()
    t0 = time.monotonic()
    assert b.wait_for_holder("g4", poll_s=0.05) == {"done": True} and time.monotonic() - t0 >= 0.3


def test_claims_race_exactly_one_winner(settings):
    stores = [RedisJobSystem.from_settings(settings) for _ in range(4)]
    claims = [s.batch_claims(lease_s=5) for s in stores]
    barrier = threading.Barrier(len(claims))
    won: list[bool] = []

    def go(c):
        barrier.wait()
        won.append(c.claim("contested"))

    threads = [threading.Thread(target=go, args=(c,)) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1


# counters ---------------------------------------------------------------------------------------------------
def test_rate_counts_per_owner_within_a_window(store):
    decisions = [store.hit_rate("alice", limit=3) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[-1].count == 5 and 1 <= decisions[-1].retry_after_s <= 61
    assert store.hit_rate("bob", limit=3).allowed


def test_in_flight_slots_count_per_owner_and_type_and_come_back_when_the_job_ends(store):
    a, b = new(store, job_type=JobType.finetune), new(store, job_type=JobType.finetune)
    assert store.inflight.reserve("alice", JobType.finetune, a.id, 2) is None
    assert store.inflight.reserve("alice", JobType.finetune, a.id, 2) is None  # held already: no second slot
    assert store.inflight.reserve("alice", JobType.finetune, b.id, 2) is None
    assert store.inflight.reserve("alice", JobType.finetune, "third", 2) == 2
    assert store.inflight.reserve("alice", JobType.generate, "gen", 2) is None  # another type
    assert store.inflight.reserve("bob", JobType.finetune, "bobs", 2) is None  # another owner
    assert store.active_count("alice", JobType.finetune) == 2
    store.transition(a.id, JobStatus.running)
    assert store.active_count("alice", JobType.finetune) == 2  # running still holds its slot
    store.transition(a.id, JobStatus.succeeded)  # given back in the same step as the status change
    assert store.active_count("alice", JobType.finetune) == 1
    store.delete(b.id)
    assert store.active_count("alice", JobType.finetune) == 0


def test_idempotent_job_id_names_the_first_job(store):
    job, _ = store.create(JobType.generate, "alice", {}, idempotency_key="k9", fingerprint="f")
    assert store.idempotent_job_id("alice", "k9") == job.id
    assert store.idempotent_job_id("bob", "k9") is None and store.idempotent_job_id("alice", "k8") is None


# the async read side -------------------------------------------------------------------------------------------
def test_async_reader_reads_resumes_and_waits(store, settings):
    async def main():
        reader = AsyncRedisJobSystem.from_settings(settings)
        try:
            job = new(store)
            assert await reader.get_owned(job.id, "alice") == store.get(job.id)
            with pytest.raises(JobNotFound):
                await reader.get_owned(job.id, "bob")
            first = await reader.events(job.id)
            assert [e.event for e in first] == ["status"]
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, store.transition, job.id, JobStatus.running)
            got = await reader.events(job.id, after=first[-1].id, block_ms=5000)
            assert [e.data["status"] for e in got] == ["running"]
            loop.call_later(0.2, store.transition, job.id, JobStatus.succeeded)
            assert (await reader.wait_finished(job.id, 5)).status == JobStatus.succeeded
            other = new(store)
            t0 = time.monotonic()
            assert (await reader.wait_finished(other.id, 0.3)).status == JobStatus.queued
            assert time.monotonic() - t0 < 2
        finally:
            await reader.aclose()

    asyncio.run(main())


def test_the_adapter_speaks_the_whole_interface():
    missing = [name for name in dir(JobSystem) if not name.startswith("_") and not hasattr(RedisJobSystem, name)]
    assert missing == []
