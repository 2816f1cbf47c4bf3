"""Reindex, sweeper and deletion helpers against a real Redis and a local artifact store."""

import json
import os
import time

import pytest
import redis

from services.jobs.artifacts import ArtifactStore
from services.jobs.deletion import settle_artifacts
from services.jobs.redis_system import RedisJobSystem
from services.jobs.reindex import reindex
from services.jobs.sweeper import sweep
from services.contracts.jobs import JobType


@pytest.fixture
def system(redis_server, key_prefix):
    return RedisJobSystem(redis.Redis.from_url(redis_server), prefix=key_prefix)


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(str(tmp_path / "artifacts"))


def put_model(store, model_id, owner):
    store.write_bytes(f"jobs/{model_id}/model/pytorch_lora_weights.safetensors", b"w" * 100)
    store.write_bytes(f"jobs/{model_id}/model.json", json.dumps(
        {"model_id": model_id, "owner": owner, "info": {"method": "lora", "instance_prompt": "sks"}}).encode())


def age(store, job_id, seconds):
    then = time.time() - seconds
    for key in store.list(f"jobs/{job_id}"):
        os.utime(store.local_path(key), (then, then))


def test_reindex_rebuilds_models_owners_and_storage(system, store):
    put_model(store, "m1", "alice")
    put_model(store, "m2", "0123456789abcdef01234567")
    store.write_bytes("jobs/g1/images/0.png", b"png")  # a generation: no model, not registered
    assert not system.is_indexed()
    report = reindex(system, store)
    assert sorted(report.models_registered) == ["m1", "m2"] and report.owners == {"alice", "0123456789abcdef01234567"}
    assert [m["id"] for m in system.list_models("alice")] == ["m1"]
    assert system.get_model("m2", "0123456789abcdef01234567")["instance_prompt"] == "sks"
    assert system.storage_used("alice") == store.usage("jobs/m1")[0] > 100
    assert system.is_indexed()
    assert reindex(system, store).models_registered == []  # idempotent


def test_sweep_removes_expired_deleted_and_orphaned_files_only(system, store):
    live, _ = system.create(JobType.generate, "alice", {})
    store.write_bytes(f"jobs/{live.id}/images/0.png", b"x")
    put_model(store, "model-kept", "alice")                      # its job record expired; the model lives
    store.write_bytes("jobs/expired/images/0.png", b"x")         # record gone (TTL), files old
    store.write_bytes("jobs/in-flight/inputs/000.png", b"x")     # a submit writing its inputs right now
    store.write_bytes("jobs/deleted-now/logs/x.csv", b"x")       # written by a worker after a DELETE
    system.mark_deleted("deleted-now")
    system.record_storage("alice", "expired", 1)
    for job_id in (live.id, "model-kept", "expired", "deleted-now"):
        age(store, job_id, 7200)
    store.write_bytes("jobs/deleted-now/logs/y.csv", b"x")       # young, but deleted: goes at once
    report = sweep(system, store, grace_s=3600)  # not indexed yet: the model is registered first, not swept
    assert sorted(report.removed) == ["deleted-now", "expired"]
    assert report.kept_young == ["in-flight"]
    assert sorted(store.children("jobs")) == sorted([live.id, "model-kept", "in-flight"])
    assert [m["id"] for m in system.list_models("alice")] == ["model-kept"]
    assert system.storage_used("alice") == store.usage("jobs/model-kept")[0]


def test_a_worker_that_finds_its_job_deleted_removes_what_it_wrote(system, store):
    job, _ = system.create(JobType.generate, "alice", {})
    system.mark_deleted(job.id)
    system.delete(job.id)
    store.write_bytes(f"jobs/{job.id}/images/0.png", b"late")
    settle_artifacts(system, store, job.id)
    assert store.children("jobs") == []


def test_a_deleted_jobs_bytes_are_never_counted_again(system, store):
    """A worker measures its files, the owner deletes the job, then the worker records what it measured: the
    deletion must win, or the owner's storage keeps bytes that no longer exist."""
    job, _ = system.create(JobType.generate, "alice", {})
    assert system.record_storage("alice", job.id, 500) and system.storage_used("alice") == 500
    system.mark_deleted(job.id)  # delete_job's order: tombstone, record, storage, files
    system.delete(job.id)
    system.drop_storage(job.id)
    assert system.record_storage("alice", job.id, 500) is False  # the late write of the measuring worker
    assert system.storage_used("alice") == 0
    other, _ = system.create(JobType.generate, "alice", {})
    assert system.record_storage("alice", other.id, 7) and system.storage_used("alice") == 7
