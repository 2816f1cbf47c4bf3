"""Worker heartbeats, running jobs and finished-job statistics, against the real Redis."""

import time

import pytest
import redis

from services.contracts.jobs import JobStatus, JobType
from services.jobs.celery_app import make_celery
from services.jobs.interface import TransitionRefused
from services.jobs.monitoring import (
    DURATION_BUCKETS,
    JobStats,
    WorkerBeat,
    WorkerBeatThread,
    WorkerRegistry,
    buckets_for,
    parse_nvidia_smi,
    queue_depths,
)
from services.jobs.redis_system import RedisJobSystem
from services.jobs.settings import JobSettings


@pytest.fixture
def client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server)


def test_buckets_are_cumulative_and_bounded():
    assert buckets_for(0.5) == [f"{b:g}" for b in DURATION_BUCKETS]
    assert buckets_for(60) == [f"{b:g}" for b in DURATION_BUCKETS if b >= 60]
    assert buckets_for(10**6) == []  # only +Inf, which the exporter derives from the count


def test_running_set_follows_the_status_and_outcomes_count_once(client, key_prefix):
    store = RedisJobSystem(client, prefix=key_prefix, ttl_s=100)
    a, _ = store.create(JobType.finetune, "alice", {})
    b, _ = store.create(JobType.finetune, "alice", {})
    c, _ = store.create(JobType.generate, "bob", {})
    for job in (a, b, c):
        store.transition(job.id, JobStatus.running)
    assert store.stats.running(["finetune", "generate"]) == {"finetune": 2, "generate": 1}
    store.transition(a.id, JobStatus.queued)  # re-delivered after its worker died: not running any more
    assert store.stats.running(["finetune"]) == {"finetune": 1}
    store.transition(b.id, JobStatus.succeeded, result={})
    store.transition(c.id, JobStatus.failed)
    with pytest.raises(TransitionRefused):
        store.transition(c.id, JobStatus.succeeded)  # refused: must not be counted
    q, _ = store.create(JobType.generate, "bob", {})
    store.transition(q.id, JobStatus.canceled)  # never ran: counted, no duration
    assert store.stats.running(["finetune", "generate"]) == {"finetune": 0, "generate": 0}
    finished = store.stats.finished()
    assert finished["finetune:succeeded"]["count"] == 1 and finished["finetune:succeeded"]["timed"] == 1
    assert finished["finetune:succeeded"]["buckets"]["1"] == 1  # ran well under a second
    assert finished["generate:failed"]["count"] == 1
    assert finished["generate:canceled"] == {"count": 1}
    assert "finetune:failed" not in finished


def test_durations_land_in_their_buckets(client, key_prefix):
    stats = JobStats(client, key_prefix)
    stats.record("j1", "finetune", "succeeded", 30.0)
    stats.record("j2", "finetune", "succeeded", 7200.0)
    row = stats.finished()["finetune:succeeded"]
    assert row["count"] == row["timed"] == 2 and row["sum"] == pytest.approx(7230.0)
    assert "15" not in row["buckets"] and row["buckets"]["60"] == 1 and row["buckets"]["3600"] == 1
    assert row["buckets"]["14400"] == 2


def test_workers_are_up_while_they_beat_and_down_after(client, key_prefix):
    reg = WorkerRegistry(client, key_prefix, ttl_s=0.6)
    reg.beat(WorkerBeat(name="finetune@a", queues=["finetune"], pid=1, host="a"))
    reg.beat(WorkerBeat(name="generate@a", queues=["generate"], pid=2, host="a", active=1))
    state = reg.by_queue(["finetune", "generate"])
    assert state["finetune"]["up"] and state["generate"]["up"] and state["generate"]["workers_up"] == 1
    time.sleep(0.8)
    reg.beat(WorkerBeat(name="generate@a", queues=["generate"], pid=2, host="a"))
    state = reg.by_queue(["finetune", "generate"])
    assert not state["finetune"]["up"] and state["finetune"]["workers"][0]["name"] == "finetune@a"
    assert state["generate"]["up"]
    reg.leave("generate@a")  # a clean shutdown is down at once
    assert not reg.by_queue(["generate"])["generate"]["up"]


def test_beat_thread_beats_and_leaves_on_stop(client, key_prefix):
    reg = WorkerRegistry(client, key_prefix, ttl_s=5)
    beat = WorkerBeatThread(reg, "generate@t", ["generate"], interval_s=0.05, active=lambda: 3)
    beat.start()
    try:
        deadline = time.monotonic() + 5
        while not reg.workers():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        [w] = reg.workers()
        assert w.up and w.active == 3 and w.queues == ["generate"]
    finally:
        beat.stop()
    assert [w.up for w in reg.workers()] == [False]


def test_queue_depths_counted_by_kombu(redis_server, key_prefix):
    app = make_celery(JobSettings(redis_url=redis_server, key_prefix=key_prefix))
    assert queue_depths(app, ["finetune", "generate"]) == {"finetune": 0, "generate": 0}
    for priority in (None, 5, None):
        app.send_task("detbooth.generate", args=["x"], queue="generate", priority=priority)
    app.send_task("detbooth.finetune", args=["y"], queue="finetune")
    assert queue_depths(app, ["finetune", "generate"]) == {"finetune": 1, "generate": 3}


def test_nvidia_smi_output_is_parsed_to_bytes():
    text = "0, 1024, 81559\n1, 0, 81559\n"
    gpus = parse_nvidia_smi(text)
    assert [(g.index, g.used_bytes, g.total_bytes) for g in gpus] == [
        ("0", 1024 * 2**20, 81559 * 2**20), ("1", 0, 81559 * 2**20)]
    assert parse_nvidia_smi("No devices were found\n") == []
