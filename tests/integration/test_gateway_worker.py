"""Gateway -> Redis -> a real Celery worker process -> job store, over real HTTP."""

import pytest

@pytest.fixture
def stack(worker_stack):
    return worker_stack

def test_generate_job_runs_on_the_worker(stack):
    r = stack.post("/generate", headers={"Prefer": "wait=60"},
                   json={"prompt": "a photo of sks dog", "num_inference_steps": 2, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    job = r.json()
    assert r.headers["preference-applied"] == "wait=60"
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["started_at"], job
    image = job["result"]["images"][0]
    assert stack.get(image["url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    events = stack.get(f"/jobs/{job['id']}/events").text
    assert "running" in events and job["status"] in events

def test_prefer_wait_zero_answers_202_at_once(stack):
    # small: the worker is shared with the next tests
    r = stack.post("/generate", headers={"Prefer": "wait=0"},
                   json={"prompt": "x", "num_inference_steps": 1, "width": 64, "height": 64})
    assert r.status_code == 202
