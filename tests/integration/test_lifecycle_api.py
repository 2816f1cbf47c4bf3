"""/whoami, the storage quota, webhook target checks and the new routes' OpenAPI (gateway in process, real
Redis; no worker)."""

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.main import create_app
from gateway.settings import GatewaySettings
from services.jobs.redis_system import RedisJobSystem
from services.jobs.settings import JobSettings
from tests.webhook_receiver import SECRET

GEN = {"prompt": "a photo of sks dog", "num_inference_steps": 1, "width": 64, "height": 64}
CONFIG = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "resolution": 64}
A1, A2, B = ({"Authorization": f"Bearer {k}"} for k in ("alice-1", "alice-2", "bob-1"))


def png(i: int) -> bytes:
    """A noisy 96x96 photo (~27 kB as PNG)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def make(redis_server, key_prefix, tmp_path):
    clients = []

    def make(**gateway):
        settings = GatewaySettings(api_keys="alice:alice-1,alice:alice-2,bob:bob-1", **gateway)
        jobs = JobSettings(redis_url=redis_server, key_prefix=key_prefix, data_dir=tmp_path / "data",
                           webhook_secret=SECRET)
        c = TestClient(create_app(settings, jobs))
        c.__enter__()
        clients.append(c)
        return c, RedisJobSystem.from_settings(jobs)

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_whoami_names_the_owner_its_limits_and_storage(make):
    c, system = make(storage_quota_bytes=10_000_000)
    me = c.get("/whoami", headers=A1).json()
    assert me == c.get("/whoami", headers=A2).json()  # both keys of alice: one owner
    assert me["owner"] == "alice" and me["storage"] == {"bytes": 0, "quota_bytes": 10_000_000}
    assert me["limits"]["rate_limit_per_minute"] == 600 and me["limits"]["storage_quota_bytes"] == 10_000_000
    system.record_storage("alice", "j1", 1234)
    system.record_storage("bob", "j2", 99)
    assert c.get("/whoami", headers=A2).json()["storage"]["bytes"] == 1234
    assert c.get("/whoami", headers=B).json()["storage"]["bytes"] == 99
    assert c.get("/whoami").status_code == 401


def test_storage_quota_refuses_new_jobs_with_a_problem_naming_the_limit(make):
    c, system = make(storage_quota_bytes=2000)
    files = [("images", (f"{i}.png", png(i), "image/png")) for i in range(3)]
    r = c.post("/finetune", headers=A1, files=files, data={"config": json.dumps(CONFIG)})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json", r.text
    body = r.json()
    assert body["limit"] == "storage_quota_bytes" and body["quota_bytes"] == 2000
    assert "DETBOOTH_STORAGE_QUOTA_BYTES" in body["detail"]
    assert c.get("/jobs", headers=A1).json()["jobs"] == []  # nothing was made
    system.record_storage("alice", "old-job", 2500)
    r = c.post("/generate", headers=A2, json=GEN)
    assert r.status_code == 413 and r.json()["used_bytes"] == 2500
    r = c.post("/generate", headers=B, json=GEN)  # bob is under the quota
    assert r.status_code == 202
    c.post(f"/jobs/{r.json()['id']}/cancel", headers=B)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://localhost/x", "http://10.0.0.8/x",
                                 "http://169.254.169.254/latest", "ftp://example.com/x", "nope"])
def test_private_webhook_targets_are_refused_with_422(make, url):
    c, _ = make()
    r = c.post("/generate", headers=A1, json={**GEN, "webhook": url})
    assert r.status_code == 422 and r.json()["type"].endswith(":webhook-refused"), r.text
    files = [("images", (f"{i}.png", png(i), "image/png")) for i in range(3)]
    r = c.post("/finetune", headers=A1, files=files, data={"config": json.dumps(CONFIG), "webhook": url})
    assert r.status_code == 422 and r.json()["type"].endswith(":webhook-refused"), r.text
    r = c.post("/generate", headers=A1, json={**GEN, "webhook": "https://93.184.215.14/h", "webhook_events": ["x"]})
    assert r.status_code == 422
    assert c.get("/jobs", headers=A1).json()["jobs"] == []


def test_new_routes_are_in_the_openapi(make):
    c, _ = make()
    paths = c.get("/openapi.json").json()["paths"]
    assert "delete" in paths["/jobs/{job_id}"] and "delete" in paths["/models/{model_id}"]
    assert "get" in paths["/whoami"]
    assert {"webhook", "webhook_events"} <= set(
        paths["/finetune"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"])


def test_delete_of_unknown_or_foreign_ids_is_404(make):
    c, _ = make()
    job = c.post("/generate", headers=A1, json=GEN).json()["id"]
    assert c.delete(f"/jobs/{job}", headers=B).status_code == 404
    assert c.get(f"/jobs/{job}", headers=A2).status_code == 200
    assert c.delete("/jobs/nope", headers=A1).status_code == 404
    assert c.delete("/models/nope", headers=A1).status_code == 404
    assert c.delete(f"/jobs/{job}", headers=A2).status_code == 204  # queued: canceled, then removed
    assert c.get(f"/jobs/{job}", headers=A1).status_code == 404


def test_a_default_size_over_the_deployments_limit_is_a_422_not_a_500(make, monkeypatch):
    from services.contracts.generate import generation_limits

    monkeypatch.setenv("DETBOOTH_GEN_MAX_SIDE", "128")
    generation_limits.cache_clear()
    try:
        c, _ = make()
        r = c.post("/generate", headers=A1, json={"prompt": "0"})  # width/height default to 512
        assert r.status_code == 422 and "width" in r.json()["detail"], r.text
    finally:
        generation_limits.cache_clear()
