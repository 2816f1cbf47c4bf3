"""The generate task body end to end: a real Redis job store, a local artifact store, the tiny model."""

import io
import uuid

import pytest
import redis
from PIL import Image

from services.contracts.jobs import JobStatus, JobType
from services.dreambooth import generate as gen_module
from services.dreambooth import tasks
from services.jobs.artifacts import ArtifactStore
from services.jobs.redis_system import RedisJobSystem
from services.jobs.settings import JobSettings

PARAMS = {
    "prompt": "a photo of sks dog",
    "num_inference_steps": 2,
    "width": 64,
    "height": 64,
    "guidance_scale": 5.0,
    "scheduler": "ddim",
}


@pytest.fixture
def env(job_env, monkeypatch):
    monkeypatch.setattr(gen_module, "_worker", None)
    store, artifacts, _ = job_env
    return store, artifacts


def _run(store, params, owner="owner-1"):
    job, _ = store.create(JobType.generate, owner, {"params": params})
    tasks.generate(job.id)  # the Celery task called in-process: same body a worker runs
    return store.get(job.id)


def test_generate_job_writes_pngs_with_metadata(env):
    store, artifacts = env
    job = _run(store, {**PARAMS, "num_images": 2, "seed": 123})
    assert job.status == JobStatus.succeeded, job.error
    images = job.result["images"]
    assert [im["seed"] for im in images] == [123, 124]
    assert [im["key"] for im in images] == [f"jobs/{job.id}/images/0.png", f"jobs/{job.id}/images/1.png"]
    png = Image.open(io.BytesIO(artifacts.read_bytes(images[1]["key"])))
    assert png.size == (64, 64)
    assert png.text["prompt"] == "a photo of sks dog" and png.text["seed"] == "124"
    assert (png.text["steps"], png.text["guidance_scale"], png.text["scheduler"], png.text["model"]) == (
        "2",
        "5.0",
        "ddim",
        "base",
    )
    assert job.result["model"] == "base" and "tiny random" in job.result["warning"]
    assert job.progress.step == job.progress.total == 2


def test_same_request_same_pngs_and_random_seed_is_recorded(env):
    store, artifacts = env
    a, b = _run(store, {**PARAMS, "seed": 9}), _run(store, {**PARAMS, "seed": 9})
    pixels = [
        Image.open(io.BytesIO(artifacts.read_bytes(j.result["images"][0]["key"]))).tobytes() for j in (a, b)
    ]
    assert pixels[0] == pixels[1]
    c = _run(store, PARAMS)  # no seed: one is drawn and returned
    seed = c.result["images"][0]["seed"]
    assert isinstance(seed, int) and c.result["params"]["seed"] == seed
    d = _run(store, {**PARAMS, "seed": seed})
    again = [
        Image.open(io.BytesIO(artifacts.read_bytes(j.result["images"][0]["key"]))).tobytes() for j in (c, d)
    ]
    assert again[0] == again[1]


def test_finetuned_models_by_id(env, full_finetune_dir, lora_file, tiny_sd):
    store, artifacts = env
    artifacts.upload_dir(full_finetune_dir, "jobs/ft-full/model")
    artifacts.upload_dir(lora_file.parent, "jobs/ft-lora/model")
    store.register_model(
        "owner-1",
        "ft-full",
        {
            "method": "full",
            "base_model": str(tiny_sd),
            "path": "jobs/ft-full/model",
            "instance_prompt": "a photo of sks dog",
        },
    )
    store.register_model(
        "owner-1",
        "ft-lora",
        {
            "method": "lora",
            "base_model": str(tiny_sd),
            "path": f"jobs/ft-lora/model/{lora_file.name}",
            "instance_prompt": "a photo of sks dog",
        },
    )
    pixels = {}
    for model in ("base", "ft-full", "ft-lora"):
        job = _run(store, {**PARAMS, "seed": 1, "model": model})
        assert job.status == JobStatus.succeeded, job.error
        pixels[model] = artifacts.read_bytes(job.result["images"][0]["key"])
    assert len(set(pixels.values())) == 3
    # another owner cannot use them
    job = _run(store, {**PARAMS, "model": "ft-full"}, owner="owner-2")
    assert job.status == JobStatus.failed and job.error.code == "unknown_model"


def test_unknown_model_and_bad_params_fail_with_a_code(env):
    store, _ = env
    job = _run(store, {**PARAMS, "model": "nope"})
    assert (
        job.status == JobStatus.failed and job.error.code == "unknown_model" and "nope" in job.error.message
    )
    job = _run(store, {**PARAMS, "width": 65})
    assert (
        job.status == JobStatus.failed and job.error.code == "invalid_params" and "width" in job.error.message
    )


def test_cancel_during_sampling(env, monkeypatch):
    store, artifacts = env
    job, _ = store.create(JobType.generate, "owner-1", {"params": {**PARAMS, "num_inference_steps": 4}})
    real = store.report_progress

    def cancel_after_first_step(job_id, progress, metrics=None):
        real(job_id, progress, metrics)
        store.cancel(job_id)

    monkeypatch.setattr(store, "report_progress", cancel_after_first_step)
    tasks.generate(job.id)
    done = store.get(job.id)
    assert done.status == JobStatus.canceled and done.progress.step == 1
    assert artifacts.list(f"jobs/{job.id}") == []


def _pixels(artifacts, job):
    return [Image.open(io.BytesIO(artifacts.read_bytes(im["key"]))) for im in job.result["images"]]


def test_queued_jobs_of_the_same_shape_share_one_pipeline_call(env):
    import numpy as np

    from services.jobs.celery_app import make_celery
    from services.jobs.tasks import GENERATE_TASK

    store, artifacts = env
    same = [
        store.create(
            JobType.generate,
            "owner-1",
            {"params": {**PARAMS, "seed": 100 + i, "prompt": f"a photo of sks dog {i}"}},
        )[0]
        for i in range(3)
    ]
    other_shape, _ = store.create(JobType.generate, "owner-1", {"params": {**PARAMS, "width": 72}})
    app = make_celery(tasks.settings)
    try:
        for job in [*same, other_shape]:
            app.send_task(GENERATE_TASK, args=[job.id])  # real messages in the Redis queue
    finally:
        app.close()
    tasks.generate(same[0].id)
    done = [store.get(j.id) for j in same]
    assert [j.status for j in done] == [JobStatus.succeeded] * 3
    assert [j.result["images"][0]["seed"] for j in done] == [100, 101, 102]
    assert all(j.result["batch_images"] == 3 for j in done)
    assert [_pixels(artifacts, j)[0].text["prompt"] for j in done] == [
        f"a photo of sks dog {i}" for i in range(3)
    ]
    assert store.get(other_shape.id).status == JobStatus.queued
    tasks.generate(same[1].id)  # its own message arrives later: nothing changes
    assert store.get(same[1].id).result == done[1].result
    alone = _run(store, {**PARAMS, "seed": 101, "prompt": "a photo of sks dog 1"})
    a, b = (np.asarray(_pixels(artifacts, j)[0]).astype(int) for j in (done[1], alone))
    assert np.abs(a - b).max() <= 1  # the same image, up to batched rounding


@pytest.mark.parametrize("holder_finishes", [True, False])
def test_a_job_leased_by_another_worker(env, holder_finishes):
    """Its message reaching this worker waits for the holder's result, or runs it once the lease lapses."""
    import threading

    store, _ = env
    job, _ = store.create(JobType.generate, "owner-1", {"params": {**PARAMS, "seed": 5}})
    holder = store.batch_claims(lease_s=2)
    assert holder.claim(job.id)
    made_elsewhere = {"images": [{"key": "jobs/x/images/0.png", "seed": 5}], "model": "base"}
    if holder_finishes:
        threading.Timer(0.5, holder.publish, args=(job.id, made_elsewhere)).start()
    tasks.generate(job.id)
    result = store.get(job.id).result
    assert (result == made_elsewhere) == holder_finishes
    assert result["images"][0]["seed"] == 5
