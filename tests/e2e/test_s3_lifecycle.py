"""The artifact store on S3, for real: moto's S3 server on loopback, the gateway and a Celery worker pointed
at `s3://`. Fine-tune, generate with the model, lose Redis and recover, delete: every object is in the
bucket while it should be, and none is left after deletion."""

import json
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.e2e.test_dreambooth_e2e import subject_png
from tests.faults.support import finished, wait_job
from tests.integration.conftest import ALICE, BOB, base_env
from tests.moto_s3 import moto_s3, objects
from tests.procs import ROOT, start_gateway, start_worker

pytestmark = pytest.mark.slow
BUCKET = "detbooth-artifacts"
CONFIG = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "method": "lora",
          "resolution": 64, "max_train_steps": 4, "checkpoint_every": 2, "with_prior_preservation": False,
          "seed": 3}
GEN = {"prompt": "a photo of sks dog on the moon", "width": 64, "height": 64, "num_inference_steps": 2,
       "seed": 7}


@pytest.fixture
def s3_stack(redis_server, logs_dir, tmp_path, procs):
    with moto_s3(BUCKET) as s3_env:
        env = base_env(redis_server, tmp_path / "data", DETBOOTH_ARTIFACTS_URL=f"s3://{BUCKET}/detbooth",
                       DETBOOTH_SWEEP_INTERVAL_S="3600", **s3_env)
        gateway, url = start_gateway(env, logs_dir)
        procs.append(gateway)
        procs.append(start_worker(env, logs_dir))
        with httpx.Client(base_url=url, headers=ALICE, timeout=120) as client:
            yield client, env, s3_env


def test_finetune_generate_recover_delete_on_s3(s3_stack, redis_client):
    client, env, s3_env = s3_stack
    assert objects(s3_env, BUCKET) == []

    files = [("images", (f"{i}.png", subject_png(i), "image/png")) for i in range(3)]
    r = client.post("/finetune", files=files, data={"config": json.dumps(CONFIG)})
    assert r.status_code == 202, r.text
    model_id = r.json()["id"]
    assert {f"detbooth/jobs/{model_id}/inputs/{i:03d}.png" for i in range(3)} <= set(objects(s3_env, BUCKET))
    job = wait_job(client, model_id, finished, timeout=400, what="the fine-tune")
    assert job["status"] == "succeeded", job
    stored = objects(s3_env, BUCKET)
    prefix = f"detbooth/jobs/{model_id}/"
    assert f"{prefix}model/pytorch_lora_weights.safetensors" in stored and f"{prefix}model.json" in stored
    assert f"{prefix}config.yaml" in stored and f"{prefix}logs/csv/metrics.csv" in stored
    assert not [k for k in stored if "/checkpoints/" in k or "/inputs/" in k]  # retention on success
    assert client.get(job["result"]["model_url"]).status_code == 200

    def generate() -> dict:
        r = client.post("/generate", headers={"Prefer": "wait=120"}, json={**GEN, "model": model_id})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "succeeded", r.json()
        return r.json()

    gen = generate()
    assert f"detbooth/jobs/{gen['id']}/images/0.png" in objects(s3_env, BUCKET)
    assert client.get(gen["result"]["images"][0]["url"]).status_code == 200

    # Redis loses everything of this deployment: the model is unreachable until it is rebuilt
    for key in redis_client.scan_iter(f"{env['DETBOOTH_KEY_PREFIX']}:*"):
        if b":celery:" not in key:
            redis_client.delete(key)
    assert model_id not in [m["id"] for m in client.get("/models").json()["models"]]
    out = subprocess.run([sys.executable, "-m", "services.jobs.reindex"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["models_registered"] == [model_id]
    listed = {m["id"]: m for m in client.get("/models").json()["models"]}
    assert listed[model_id]["instance_prompt"] == "a photo of sks dog"
    assert model_id not in [m["id"] for m in httpx.get(f"{client.base_url}/models", headers=BOB).json()["models"]]
    assert client.get("/whoami").json()["storage"]["bytes"] > 0
    gen2 = generate()  # generation with the recovered model works

    # deletion: each object goes, and another owner cannot delete anything
    assert httpx.delete(f"{client.base_url}/models/{model_id}", headers=BOB).status_code == 404
    assert client.delete(f"/jobs/{gen2['id']}").status_code == 204
    assert not [k for k in objects(s3_env, BUCKET) if gen2["id"] in k]
    assert client.get(f"/jobs/{gen2['id']}").status_code == 404
    assert client.get(gen2["result"]["images"][0]["url"]).status_code == 404
    assert client.delete(f"/models/{model_id}").status_code == 204
    r = client.post("/generate", json={**GEN, "model": model_id})
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
    # gen's record was lost with Redis: its images are an orphan that the sweeper removes (grace 0 here)
    from services.jobs.artifacts import ArtifactStore
    from services.jobs.redis_system import RedisJobSystem
    from services.jobs.settings import JobSettings
    from services.jobs.sweeper import sweep

    import os
    saved = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)
    try:
        settings = JobSettings(redis_url=env["DETBOOTH_REDIS_URL"], key_prefix=env["DETBOOTH_KEY_PREFIX"],
                               artifacts_url=env["DETBOOTH_ARTIFACTS_URL"])
        report = sweep(RedisJobSystem.from_settings(settings), ArtifactStore(settings.artifacts_location),
                       grace_s=0)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert gen["id"] in report.removed
    assert objects(s3_env, BUCKET) == []
    assert client.get("/whoami").json()["storage"]["bytes"] == 0
    _ = uuid
