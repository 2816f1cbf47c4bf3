"""Fine-tune and generate through the gateway and a real Celery worker, over real HTTP (tiny SD model)."""

import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import BOB


def subject_png(i: int) -> bytes:
    rng = np.random.default_rng(i)
    img = np.full((72, 72, 3), (30, 120, 200), np.uint8)
    img[20:52, 20:52] = rng.integers(0, 255, (32, 32, 3))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def stack(worker_stack):
    return worker_stack


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 400) -> tuple[dict, list[dict]]:
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        seen.append(job)
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job, seen
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


@pytest.mark.slow
def test_finetune_then_generate_with_the_fine_tuned_model(stack):
    config = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "method": "lora",
              "resolution": 64, "max_train_steps": 4, "num_class_images": 2, "class_images_inference_steps": 2,
              "checkpoint_every": 2, "seed": 1}
    files = [("images", (f"{i}.png", subject_png(i), "image/png")) for i in range(3)]
    r = stack.post("/finetune", files=files, data={"config": json.dumps(config)})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued"

    job, seen = wait_finished(stack, job_id)
    assert job["status"] == "succeeded", job
    statuses = [s["status"] for s in seen]
    assert statuses[-1] == "succeeded"
    events = stack.get(f"/jobs/{job_id}/events").text
    assert '"status": "running"' in events and "event: progress" in events
    assert job["progress"]["step"] == job["progress"]["total"] == 4
    assert "loss" in job["metrics"]
    lora = stack.get(job["result"]["model_url"])
    assert lora.status_code == 200 and len(lora.content) < 1_000_000  # a small safetensors adapter
    assert "instance_prompt: a photo of sks dog" in stack.get(job["result"]["config_url"]).text

    models = stack.get("/models").json()["models"]
    tuned = [m for m in models if m["id"] == job_id]
    assert tuned and tuned[0]["instance_prompt"] == "a photo of sks dog" and tuned[0]["method"] == "lora"
    bob = httpx.Client(base_url=stack.base_url, headers=BOB, timeout=30)
    assert job_id not in [m["id"] for m in bob.get("/models").json()["models"]]

    r = stack.post("/generate", headers={"Prefer": "wait=120"},
                   json={"prompt": "a photo of sks dog on the moon", "model": job_id, "width": 64, "height": 64,
                         "num_inference_steps": 2, "seed": 7, "num_images": 2})
    assert r.status_code == 200, r.text
    gen = r.json()
    assert gen["status"] == "succeeded", gen
    images = gen["result"]["images"]
    assert [i["seed"] for i in images] == [7, 8]
    png = stack.get(images[0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert img.size == (64, 64) and img.text["seed"] == "7" and img.text["prompt"].startswith("a photo of sks")
    # another key can neither use the model nor download the images
    assert bob.post("/generate", json={"prompt": "x", "model": job_id}).status_code == 404
    assert bob.get(images[0]["url"]).status_code == 404
    assert bob.get(f"/jobs/{job_id}").status_code == 404
