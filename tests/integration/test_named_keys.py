"""Named keys through the gateway (in process, real Redis): rotation keeps an owner's jobs, others get 404."""

import os

from fastapi.testclient import TestClient

from gateway.main import create_app
from gateway.settings import GatewaySettings
from services.jobs.settings import JobSettings

GEN = {"prompt": "a photo of sks dog", "num_inference_steps": 1, "width": 64, "height": 64}


def _write(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_rotating_a_named_key_keeps_the_owners_jobs(redis_server, key_prefix, tmp_path):
    keys = tmp_path / "keys"
    _write(keys, "alice:old-key\nbare-key\n")
    app = create_app(GatewaySettings(api_keys="bob:bob-key", api_keys_file=keys),
                     JobSettings(redis_url=redis_server, key_prefix=key_prefix, data_dir=tmp_path / "data"))
    with TestClient(app) as c:
        as_ = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
        job = c.post("/generate", json=GEN, headers=as_("old-key")).json()["id"]
        bare_job = c.post("/generate", json=GEN, headers=as_("bare-key")).json()["id"]
        assert c.get(f"/jobs/{job}", headers=as_("new-key")).status_code == 401

        _write(keys, "alice:old-key\nalice:new-key\nbare-key\n")  # step 1: add the new key
        assert c.get(f"/jobs/{job}", headers=as_("new-key")).status_code == 200
        _write(keys, "alice:new-key\nbare-key\n")  # step 2: drop the old one
        assert c.get(f"/jobs/{job}", headers=as_("old-key")).status_code == 401
        listed = c.get("/jobs", headers=as_("new-key")).json()["jobs"]
        assert [j["id"] for j in listed] == [job]

        assert c.get(f"/jobs/{job}", headers=as_("bob-key")).status_code == 404
        assert c.get(f"/jobs/{bare_job}", headers=as_("new-key")).status_code == 404
        assert c.get(f"/jobs/{bare_job}", headers=as_("bare-key")).status_code == 200
        for j in (job, bare_job):
            c.post(f"/jobs/{j}/cancel", headers=as_("new-key" if j == job else "bare-key"))
