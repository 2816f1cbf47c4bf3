"""Gateway -> Redis -> a real Celery worker process -> job store, over real HTTP."""

import httpx
import pytest

from tests.integration.conftest import ALICE, base_env
from tests.procs import start_gateway, start_worker


@pytest.fixture
def stack(redis_server, logs_dir, tmp_path, procs):
    env = base_env(redis_server, tmp_path / "data")
    gw, url = start_gateway(env, logs_dir)
    procs.append(gw)
    procs.append(start_worker(env, logs_dir))
    with httpx.Client(base_url=url, headers=ALICE, timeout=60) as client:
        yield client


def test_generate_job_runs_on_the_worker(stack):
    r = stack.post("/generate", headers={"Prefer": "wait=30"},
                   json={"prompt": "a photo of sks dog", "num_inference_steps": 2, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    job = r.json()
    assert r.headers["preference-applied"] == "wait=30"
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["started_at"], job
    image = job["result"]["images"][0]
    assert stack.get(image["url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    events = stack.get(f"/jobs/{job['id']}/events").text
    assert "running" in events and job["status"] in events


def test_prefer_wait_zero_answers_202_at_once(stack):
    r = stack.post("/generate", headers={"Prefer": "wait=0"}, json={"prompt": "x", "num_inference_steps": 1})
    assert r.status_code == 202
