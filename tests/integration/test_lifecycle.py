"""Deletion, expiry, recovery and webhooks through the real stack: gateway + Celery worker on loopback,
real Redis, the local artifact store. Every test lists the store before and after: nothing is left over."""

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_dreambooth_e2e import subject_png
from tests.faults.support import finished, wait_job
from tests.integration.conftest import ALICE, BOB, base_env
from tests.procs import start_gateway, start_worker
from tests.webhook_receiver import SECRET, WebhookReceiver

pytestmark = pytest.mark.slow
TINY = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "method": "lora",
        "resolution": 64, "max_train_steps": 4, "checkpoint_every": 2, "with_prior_preservation": False,
        "seed": 3}
GEN = {"prompt": "a photo of sks dog", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}


def stored(data_dir) -> list[str]:
    """The artifact files, as keys. os.walk, not rglob: the sweeper may delete a folder while this looks (rglob
    raises FileNotFoundError on it; os.walk skips it)."""
    root = data_dir / "artifacts"
    return sorted(str((Path(folder) / name).relative_to(root)) for folder, _, names in os.walk(root) for name in names)


def finetune(client, config=TINY, **data) -> str:
    files = [("images", (f"{i}.png", subject_png(i), "image/png")) for i in range(3)]
    r = client.post("/finetune", files=files, data={"config": json.dumps(config), **data})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_until(predicate, timeout=30.0, what=""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


def make_stack(redis_server, logs_dir, data_dir, procs, **extra):
    env = base_env(redis_server, data_dir, DETBOOTH_WEBHOOK_SECRET=SECRET, DETBOOTH_WEBHOOK_ALLOW_PRIVATE="true",
                   DETBOOTH_WEBHOOK_RETRY_BASE_S="0.2", DETBOOTH_WEBHOOK_PROGRESS_INTERVAL_S="0", **extra)
    gw, url = start_gateway(env, logs_dir)
    procs.append(gw)
    procs.append(start_worker(env, logs_dir))
    return httpx.Client(base_url=url, headers=ALICE, timeout=120), env


def test_finetune_generate_webhooks_recover_and_delete(redis_server, redis_client, logs_dir, tmp_path, procs,
                                                       receiver):
    data_dir = tmp_path / "data"
    client, env = make_stack(redis_server, logs_dir, data_dir, procs)
    assert stored(data_dir) == []

    model_id = finetune(client, webhook=receiver.url, webhook_events="progress,completed")
    job = wait_job(client, model_id, finished, timeout=400, what="the fine-tune")
    assert job["status"] == "succeeded", job
    got = receiver.wait_for(lambda rs: any(r.payload and r.payload["type"] == "job.completed" for r in rs))
    hooks = [r.payload for r in got if r.payload and r.payload["data"]["id"] == model_id]
    types = [h["type"] for h in hooks]  # deliveries run in parallel: the standard promises no order
    assert types.count("job.completed") == 1 and set(types) == {"job.progress", "job.completed"}, types
    done = next(h for h in hooks if h["type"] == "job.completed")
    assert done["data"]["status"] == "succeeded" and done["data"]["result"]["model_id"] == model_id
    assert all(r.payload is not None for r in got), "a delivery did not verify"

    r = client.post("/generate", headers={"Prefer": "wait=120"},
                    json={**GEN, "model": model_id, "webhook": receiver.url, "webhook_events": ["start", "completed"]})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    gen = r.json()
    got = receiver.wait_for(lambda rs: sum(1 for x in rs if x.payload and x.payload["data"]["id"] == gen["id"]) >= 2)
    # parallel deliveries: the start may arrive after the completion (the standard promises no order)
    assert sorted(x.payload["type"] for x in got if x.payload["data"]["id"] == gen["id"]) == ["job.completed",
                                                                                             "job.start"]
    assert client.get("/whoami").json()["storage"]["bytes"] > 0

    # Redis loses this deployment's data; a gateway starting afterwards lists the model again
    for key in redis_client.scan_iter(f"{env['DETBOOTH_KEY_PREFIX']}:*"):
        if b":celery:" not in key:
            redis_client.delete(key)
    assert model_id not in [m["id"] for m in client.get("/models").json()["models"]]
    gw2, url2 = start_gateway(env, logs_dir)
    procs.append(gw2)
    assert "Redis runs WITHOUT persistence" in gw2.log()
    with httpx.Client(base_url=url2, headers=ALICE, timeout=120) as c2:
        assert model_id in [m["id"] for m in c2.get("/models").json()["models"]]
        r = c2.post("/generate", headers={"Prefer": "wait=120"}, json={**GEN, "model": model_id})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        gen2 = r.json()["id"]

        # deletion: another owner gets 404 and changes nothing; the owner's deletes leave nothing behind
        with httpx.Client(base_url=url2, headers=BOB, timeout=30) as bob:
            assert bob.delete(f"/models/{model_id}").status_code == 404
            assert bob.delete(f"/jobs/{gen2}").status_code == 404
        before = stored(data_dir)
        assert c2.delete(f"/jobs/{gen2}").status_code == 204
        assert c2.get(f"/jobs/{gen2}").status_code == 404
        assert c2.get(f"/artifacts/jobs/{gen2}/images/0.png").status_code == 404
        assert [k for k in before if gen2 not in k] == stored(data_dir)
        assert c2.delete(f"/models/{model_id}").status_code == 204
        r = c2.post("/generate", json={**GEN, "model": model_id})
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert model_id not in [m["id"] for m in c2.get("/models").json()["models"]]
        assert c2.get(f"/artifacts/jobs/{model_id}/model/pytorch_lora_weights.safetensors").status_code == 404
        assert c2.delete(f"/models/{model_id}").status_code == 404
    # the first generation's record went with Redis: its images are the only files left, for the sweeper
    assert {k.split("/")[1] for k in stored(data_dir)} == {gen["id"]}


def test_deleting_a_running_finetune_cancels_it_and_leaves_nothing(redis_server, logs_dir, tmp_path, procs):
    data_dir = tmp_path / "data"
    client, _ = make_stack(redis_server, logs_dir, data_dir, procs)
    assert stored(data_dir) == []
    job_id = finetune(client, {**TINY, "max_train_steps": 400, "checkpoint_every": 2})
    ckpts = data_dir / "artifacts" / "jobs" / job_id / "checkpoints"
    wait_job(client, job_id, lambda j: j["status"] == "running" and ckpts.exists() and any(ckpts.iterdir()),
             timeout=300, what="a checkpoint")
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/artifacts/jobs/{job_id}/config.yaml").status_code == 404
    wait_until(lambda: stored(data_dir) == [], timeout=60, what="the worker to stop writing")
    time.sleep(2)
    assert stored(data_dir) == []  # and it stays empty: the worker found its job deleted
    assert client.get("/whoami").json()["storage"]["bytes"] == 0


def test_finished_jobs_files_expire_with_the_job(redis_server, logs_dir, tmp_path, procs):
    data_dir = tmp_path / "data"
    client, _ = make_stack(redis_server, logs_dir, data_dir, procs, DETBOOTH_JOB_TTL_S="2",
                           DETBOOTH_SWEEP_INTERVAL_S="1", DETBOOTH_ORPHAN_GRACE_S="1")
    assert stored(data_dir) == []
    r = client.post("/generate", headers={"Prefer": "wait=120"}, json=GEN)
    assert r.json()["status"] == "succeeded", r.text
    gen = r.json()["id"]
    assert f"jobs/{gen}/images/0.png" in stored(data_dir)
    wait_until(lambda: client.get(f"/jobs/{gen}").status_code == 404, timeout=30, what="the job TTL")
    wait_until(lambda: stored(data_dir) == [], timeout=30, what="the sweeper")
    assert client.get("/whoami").json()["storage"]["bytes"] == 0
