"""`detbooth jobs delete`, `detbooth models delete`, `detbooth whoami` and the client's typed answers against a
real gateway and Redis."""

import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from detbooth_client import DetBoothClient
from detbooth_client.cli import main
from gateway.auth import hash_key, owner_of
from services.contracts.account import WhoAmI
from services.contracts.catalog import ModelList
from services.contracts.jobs import JobList, JobStatus, JobType, JobView
from services.jobs.redis_system import RedisJobSystem
from tests.integration.conftest import base_env
from tests.procs import start_gateway

ALICE = owner_of(hash_key("key-alice"))


@pytest.fixture(scope="module")
def gateway(redis_server, logs_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    env = base_env(redis_server, data)
    proc, url = start_gateway(env, logs_dir)
    store = RedisJobSystem(redis.Redis.from_url(redis_server), prefix=env["DETBOOTH_KEY_PREFIX"])
    yield url, store, Path(data) / "artifacts"
    proc.stop()


@pytest.fixture
def run(gateway, capsys):
    def _run(*args, key="key-alice"):
        code = main(["--url", gateway[0], "--api-key", key, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def test_jobs_delete_and_models_delete(run, gateway):
    _, store, artifacts = gateway
    job, _ = store.create(JobType.generate, ALICE, {"params": {}})  # queued, never sent to a worker
    (artifacts / "jobs" / job.id / "images").mkdir(parents=True)
    (artifacts / "jobs" / job.id / "images" / "0.png").write_bytes(b"png")
    assert run("jobs", "delete", job.id, key="key-bob")[0] == 1  # not bob's: 404
    code, out, err = run("jobs", "delete", job.id)
    assert code == 0 and out.strip() == f"deleted job {job.id}", err
    assert not (artifacts / "jobs" / job.id).exists()
    code, _, err = run("jobs", "show", job.id)
    assert code == 1 and "Job not found (404)" in err

    store.register_model(ALICE, "m" * 32, {"method": "lora", "instance_prompt": "sks"})
    (artifacts / "jobs" / ("m" * 32) / "model").mkdir(parents=True)
    (artifacts / "jobs" / ("m" * 32) / "model" / "w.safetensors").write_bytes(b"w")
    assert "m" * 32 in run("models")[1]
    code, out, err = run("models", "delete", "m" * 32)
    assert code == 0 and "deleted model" in out, err
    assert "m" * 32 not in run("models")[1] and not (artifacts / "jobs" / ("m" * 32)).exists()
    code, _, err = run("models", "delete", "m" * 32)
    assert code == 1 and "Model not found (404)" in err
    code, _, err = run("models", "delete")
    assert code == 2 and "needs a model id" in err


def test_whoami(run):
    code, out, err = run("whoami")
    assert code == 0, err
    me = json.loads(out)
    assert me["owner"] == ALICE and me["storage"]["bytes"] >= 0 and "rate_limit_per_minute" in me["limits"]


def test_the_client_returns_the_contracts_models(gateway, run):
    url, store, _ = gateway
    job, _ = store.create(JobType.generate, ALICE, {"params": {}})  # queued, never sent to a worker
    with DetBoothClient(url, "key-alice") as client:
        got, page, me, catalog = client.job(job.id), client.jobs(type="generate"), client.whoami(), client.catalog()
    assert isinstance(got, JobView) and got.status is JobStatus.queued and got.type is JobType.generate
    assert isinstance(got.created_at, datetime) and got.progress.step == 0
    assert isinstance(page, JobList) and job.id in [j.id for j in page.jobs]
    assert isinstance(me, WhoAmI) and me.owner == ALICE and me.storage.bytes >= 0
    assert isinstance(catalog, ModelList) and (catalog.models[0].id, catalog.models[0].kind) == ("base", "base")
    # the CLI prints the models' JSON dump: the same JSON the API answered
    raw = httpx.get(f"{url}/jobs/{job.id}", headers={"Authorization": "Bearer key-alice"}).json()
    assert json.loads(run("jobs", "show", job.id)[1]) == raw
