"""Per-owner fine-tune limits (gateway in-process, real Redis): caps are 422 and counts 429, as problem+json
naming the limit and its value; a slot is counted atomically and given back when the job ends."""

import json
import threading

import pytest
import redis

from gateway.settings import GatewaySettings
from services.contracts.jobs import JobStatus, JobType
from services.jobs.redis_system import RedisInFlight, RedisJobSystem
from tests.integration.conftest import ALICE, BOB, png_bytes
from tests.procs import base_env, inprocess_gateway

CONFIG = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "max_train_steps": 2,
          "resolution": 64, "num_class_images": 2}


def files(n: int = 3):
    return [("images", (f"{i}.png", png_bytes(), "image/png")) for i in range(n)]


def post(gw, config: dict, headers=ALICE, **extra_headers):
    return gw.post("/finetune", headers={**headers, **extra_headers}, files=files(),
                   data={"config": json.dumps(config)})


def limit_problem(r, status: int, limit: str, value: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["limit"] == limit and body["value"] == value, body
    assert limit in body["detail"] and str(value) in body["detail"], body
    return body


def test_defaults_are_the_documented_limits(monkeypatch):
    for k in ("MAX_ACTIVE_FINETUNES", "MAX_TRAIN_STEPS", "MAX_CLASS_IMAGES", "MAX_RESOLUTION"):
        monkeypatch.delenv(f"DETBOOTH_{k}", raising=False)
    s = GatewaySettings()
    assert (s.max_active_finetunes, s.max_train_steps, s.max_class_images, s.max_resolution) == (2, 5000, 400, 1024)


@pytest.fixture(scope="module")
def default_gw(redis_server, tmp_path_factory):
    env = base_env(redis_server, tmp_path_factory.mktemp("data"))
    del env["DETBOOTH_MAX_ACTIVE_FINETUNES"]
    with inprocess_gateway(env) as gw:
        yield gw


@pytest.mark.parametrize("field,value,limit,cap", [
    ("max_train_steps", 5001, "max_train_steps", 5000),
    ("resolution", 1032, "max_resolution", 1024),
    ("num_class_images", 401, "max_class_images", 400),
])
def test_default_caps_are_422_and_create_nothing(default_gw, field, value, limit, cap):
    before = default_gw.get("/jobs", headers=ALICE).json()["jobs"]
    limit_problem(post(default_gw, {**CONFIG, field: value}), 422, limit, cap)
    assert default_gw.get("/jobs", headers=ALICE).json()["jobs"] == before


def test_caps_at_the_limit_pass_and_one_over_is_refused(redis_server, tmp_path):
    env = base_env(redis_server, tmp_path, DETBOOTH_MAX_TRAIN_STEPS="10", DETBOOTH_MAX_RESOLUTION="64",
                   DETBOOTH_MAX_CLASS_IMAGES="5", DETBOOTH_MAX_ACTIVE_FINETUNES="100")
    with inprocess_gateway(env) as gw:
        assert post(gw, {**CONFIG, "max_train_steps": 10, "num_class_images": 5}).status_code == 202
        limit_problem(post(gw, {**CONFIG, "max_train_steps": 11}), 422, "max_train_steps", 10)
        limit_problem(post(gw, {**CONFIG, "resolution": 72}), 422, "max_resolution", 64)
        limit_problem(post(gw, {**CONFIG, "num_class_images": 6}), 422, "max_class_images", 5)
        # without prior preservation no class image is made: their number is not held against the caller
        no_prior = {**CONFIG, "with_prior_preservation": False, "num_class_images": 6}
        assert post(gw, no_prior).status_code == 202


def test_in_flight_fine_tunes_are_429_per_owner_and_a_cancel_gives_the_slot_back(redis_server, tmp_path):
    env = base_env(redis_server, tmp_path)
    del env["DETBOOTH_MAX_ACTIVE_FINETUNES"]  # the default: 2 per key
    with inprocess_gateway(env) as gw:
        first, second = (post(gw, CONFIG).json()["id"] for _ in range(2))
        body = limit_problem(post(gw, CONFIG), 429, "max_active_finetunes", 2)
        assert "2 fine-tunes queued or running" in body["detail"]
        r = post(gw, CONFIG)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert len(gw.get("/jobs", headers=ALICE).json()["jobs"]) == 2  # the refused ones left nothing
        assert post(gw, CONFIG, headers=BOB).status_code == 202  # another key has its own count
        # an Idempotency-Key replay returns the first job and takes no slot of its own
        assert gw.post(f"/jobs/{first}/cancel", headers=ALICE).json()["status"] == "canceled"
        third = post(gw, CONFIG, **{"Idempotency-Key": "ft-3"})
        replay = post(gw, CONFIG, **{"Idempotency-Key": "ft-3"})
        assert third.status_code == replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == third.json()["id"]
        limit_problem(post(gw, CONFIG), 429, "max_active_finetunes", 2)
        assert gw.post(f"/jobs/{second}/cancel", headers=ALICE).status_code == 200
        assert post(gw, CONFIG).status_code == 202


@pytest.fixture
def store(redis_server, key_prefix) -> RedisJobSystem:
    return RedisJobSystem(redis.Redis.from_url(redis_server), prefix=key_prefix, ttl_s=100)


def test_a_job_that_ends_on_the_worker_gives_its_slot_back(store):
    job, _ = store.create(JobType.finetune, "alice", {})
    assert store.inflight.reserve("alice", "finetune", job.id, 1) is None
    assert store.inflight.reserve("alice", "finetune", "another", 1) == 1
    store.transition(job.id, JobStatus.running)
    assert store.inflight.count("alice", "finetune") == 1
    store.transition(job.id, JobStatus.failed)
    assert store.inflight.count("alice", "finetune") == 0
    assert store.inflight.reserve("alice", "finetune", "another", 1) is None


def test_slots_are_taken_atomically_under_races(store):
    results: list[int | None] = []
    barrier = threading.Barrier(16)

    def take(i: int) -> None:
        barrier.wait()
        results.append(store.inflight.reserve("racer", "finetune", f"job-{i}", 2))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 2 and store.inflight.count("racer", "finetune") == 2


def test_a_missed_release_never_keeps_a_slot(store, redis_server, key_prefix):
    ended, _ = store.create(JobType.finetune, "carol", {})
    assert store.inflight.reserve("carol", "finetune", ended.id, 2) is None
    assert store.inflight.reserve("carol", "finetune", "never-created", 2) is None
    # the job ends without the release (as if the process died in between)
    store.r.hset(store.keys.job(ended.id), "status", "succeeded")
    assert store.inflight.reserve("carol", "finetune", "next", 2) is None  # the ended job's slot was dropped
    # a slot taken for a job whose record never appeared lapses after the grace period
    quick = RedisInFlight(store, grace_s=0)
    assert quick.reserve("carol", "finetune", "later", 2) is None
    assert quick.count("carol", "finetune") == 1  # only "later": the ids without a record were dropped
