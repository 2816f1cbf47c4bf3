"""The finetune task body end to end: real Redis job store, local artifact store, the tiny model.

Covers success (progress, logs, export, registered model), cancel (last checkpoint kept), a worker killed
mid-training whose re-delivered task resumes from the newest checkpoint, and clear failures."""

import importlib.util
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis
from PIL import Image

from detbooth_client.cli import ProgressBar, progress_metrics
from services.contracts.finetune import FinetuneConfig
from services.contracts.jobs import JobStatus, JobType, new_job_id
from services.dreambooth import tasks
from services.jobs.artifacts import ArtifactStore
from services.jobs.redis_system import RedisJobSystem
from services.jobs.settings import JobSettings

CONFIG = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "resolution": 64,
          "max_train_steps": 4, "checkpoint_every": 2, "keep_last_checkpoints": 1, "mixed_precision": "32",
          "num_class_images": 2, "class_images_batch_size": 2, "class_images_inference_steps": 1,
          "learning_rate": 1e-3, "seed": 5}


@pytest.fixture
def env(job_env):
    return job_env


def _png(color, size=(72, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def create_job(store: RedisJobSystem, artifacts: ArtifactStore, config: dict, images: list[bytes] | None = None,
               owner: str = "owner-1"):
    job_id = new_job_id()
    images = images if images is not None else [_png((200, 30 * i, 40)) for i in range(3)]
    keys = [artifacts.write_bytes(f"jobs/{job_id}/inputs/{i:03d}.png", data) for i, data in enumerate(images)]
    job, _ = store.create(JobType.finetune, owner, {"config": config, "inputs": keys}, job_id=job_id)
    return job


def test_finetune_job_succeeds_reports_progress_and_registers_the_model(env, tiny_sd):
    store, artifacts, settings = env
    job = create_job(store, artifacts, {**CONFIG, "validation_prompts": ["a sks dog"], "validation_every": 2,
                                        "validation_inference_steps": 1})
    tasks.finetune(job.id)
    job = store.get(job.id)
    assert job.status == JobStatus.succeeded, job.error
    events = store.events(job.id)
    steps = [e.data["progress"]["step"] for e in events if e.event == "progress" and e.data["progress"]["step"]]
    assert steps[-1] == 4 and steps == sorted(steps)
    last = [e.data for e in events if e.event == "progress"][-1]
    assert last["progress"]["total"] == 4 and {"loss", "loss_instance", "loss_prior", "it_per_s", "lr"} <= \
        set(last["metrics"])
    assert [e.data["status"] for e in events if e.event == "status"] == ["queued", "running", "succeeded"]
    # every phase in order, each with its own step, total and ETA, in the events and in the job record
    reports = [e.data["progress"] for e in events if e.event == "progress"]
    order = [r["phase"] for r in reports]
    assert [ph for i, ph in enumerate(order) if i == 0 or order[i - 1] != ph] == \
        ["preparing", "class_images", "training", "exporting"], order
    class_steps = [(r["phases"]["class_images"]["step"], r["phases"]["class_images"]["total"]) for r in reports
                   if r["phase"] == "class_images"]
    assert class_steps[0] == (0, 2) and class_steps[-1] == (2, 2), class_steps
    during = [r for r in reports if r["phase"] == "class_images" and r["phases"]["class_images"]["step"] == 2]
    assert during[0]["phases"]["class_images"]["eta_s"] == 0 and during[0]["phases"]["class_images"]["it_per_s"] > 0
    assert during[0]["step"] == 0 and during[0]["total"] == 4  # the top level stays the training steps
    phases = job.progress.phases
    assert job.progress.phase == "exporting" and set(phases) == {"preparing", "class_images", "training",
                                                                 "exporting"}
    assert (phases["preparing"].step, phases["preparing"].total) == (2, 2)
    assert (phases["training"].step, phases["training"].total, phases["training"].eta_s) == (4, 4, 0)
    assert phases["training"].it_per_s > 0
    assert (phases["exporting"].step, phases["exporting"].total) == (1, 1) and phases["exporting"].eta_s is not None
    # what `detbooth jobs watch` draws from that real event: the iterations per second are shown
    out = io.StringIO()
    ProgressBar(out).update(4, 4, progress_metrics(last), None)
    assert re.search(r"it/s \d", out.getvalue()) and "loss " in out.getvalue(), out.getvalue()

    result = job.result
    prefix = f"jobs/{job.id}"
    assert result["model"] == f"{prefix}/model/pytorch_lora_weights.safetensors" and artifacts.exists(result["model"])
    assert result["steps"] == 4 and "checkpoints" not in result
    # retention: only the export, its config and its logs remain (no checkpoints, no uploaded photos)
    assert {k[len(prefix) + 1:].split("/")[0] for k in artifacts.list(prefix)} == {"model", "config.yaml", "logs",
                                                                                   "model.json"}
    saved = FinetuneConfig.from_yaml(artifacts.read_bytes(result["config"]).decode())
    assert saved.seed == 5 and saved.max_train_steps == 4
    logs = artifacts.list(result["logs"])
    assert f"{prefix}/logs/csv/metrics.csv" in logs
    assert any("/logs/tensorboard/events.out.tfevents" in k for k in logs)
    assert f"{prefix}/logs/validation/step-000004/00-00.png" in logs
    header = artifacts.read_bytes(f"{prefix}/logs/csv/metrics.csv").decode().splitlines()[0]
    assert {"train/loss", "train/loss_instance", "train/loss_prior", "train/it_per_s"} <= set(header.split(","))

    (model,) = store.list_models("owner-1")
    assert model["id"] == job.id and model["method"] == "lora" and model["path"] == result["model"]
    assert model["instance_prompt"] == "a photo of sks dog" and model["lora"] == {"rank": 4, "alpha": 4.0}
    assert model["base_model"] == str(tiny_sd) and model["prediction_type"] == "epsilon"
    assert len(os.listdir(settings.data_dir / "class_images")) == 1  # generated once, cached


def run_and_cancel_when(store: RedisJobSystem, job_id: str, reached) -> None:
    """Runs the fine-tune task here while a thread cancels the job once its progress satisfies `reached`."""

    def cancel_when_reached():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if reached(store.get(job_id).progress):
                store.cancel(job_id)
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_reached)
    canceller.start()
    tasks.finetune(job_id)
    canceller.join()


def test_cancel_while_class_images_are_made_stops_there(env):
    """A cancel is honoured between batches of class images, not only once training runs."""
    store, artifacts, settings = env
    job = create_job(store, artifacts, {**CONFIG, "class_prompt": "a photo of a cat", "num_class_images": 60})

    def making_class_images(progress) -> bool:
        return progress.phase == "class_images" and progress.phases["class_images"].step >= 2

    run_and_cancel_when(store, job.id, making_class_images)
    job = store.get(job.id)
    assert job.status == JobStatus.canceled and job.progress.phase == "class_images"
    made = list((settings.data_dir / "class_images").glob("*/*.png"))
    assert 2 <= len(made) < 60
    assert "training" not in job.progress.phases


def test_cancel_stops_training_and_keeps_the_last_checkpoint(env):
    store, artifacts, _ = env
    job = create_job(store, artifacts, {**CONFIG, "with_prior_preservation": False, "max_train_steps": 200,
                                        "checkpoint_every": 100})

    run_and_cancel_when(store, job.id, lambda progress: progress.step >= 2)
    job = store.get(job.id)
    assert job.status == JobStatus.canceled
    ckpts = artifacts.list(f"jobs/{job.id}/checkpoints")
    assert len(ckpts) == 1 and 2 <= int(ckpts[0].rsplit("-", 1)[1].split(".")[0]) < 200
    assert not artifacts.exists(f"jobs/{job.id}/model")
    assert store.list_models("owner-1") == []


def test_killed_worker_redelivered_task_resumes_from_newest_checkpoint(env, tiny_sd):
    store, artifacts, settings = env
    job = create_job(store, artifacts, {**CONFIG, "with_prior_preservation": False, "max_train_steps": 10,
                                        "checkpoint_every": 2, "keep_last_checkpoints": 2})
    worker_env = {**os.environ, "DETBOOTH_DATA_DIR": str(settings.data_dir), "DETBOOTH_KEY_PREFIX": settings.key_prefix,
                  "DETBOOTH_SD_BASE_MODEL": str(tiny_sd), "DETBOOTH_REDIS_URL": settings.redis_url,
                  "DETBOOTH_TASK_HEARTBEAT_S": "0.5", "DETBOOTH_JOB_LEASE_S": "2"}
    worker = subprocess.Popen([sys.executable, "-c", f"from services.dreambooth import tasks; tasks.finetune({job.id!r})"],
                              env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not artifacts.list(f"jobs/{job.id}/checkpoints") and time.monotonic() < deadline:
            assert worker.poll() is None, "the worker exited early"
            time.sleep(0.1)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    killed = store.get(job.id)
    assert killed.status == JobStatus.running and killed.progress.step < 10
    newest = max(int(k.rsplit("-", 1)[1].split(".")[0]) for k in artifacts.list(f"jobs/{job.id}/checkpoints"))

    deadline = time.monotonic() + 10  # the dead worker's job lease lapses (before Celery would redeliver)
    while store.lease(job.id, 1).holder() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    tasks.finetune(job.id)  # Celery delivers the unacknowledged task again
    job = store.get(job.id)
    assert job.status == JobStatus.succeeded, job.error
    assert job.attempts == 2
    assert job.result["resumed_from_step"] >= newest >= 2 and job.result["steps"] == 10
    logs = artifacts.list(f"jobs/{job.id}/logs")
    assert f"jobs/{job.id}/logs/csv/metrics.csv" in logs  # the first attempt's log is kept
    assert any("/logs/csv-resumed-at-step-" in k for k in logs)


@pytest.mark.parametrize("patch, field", [({"resolution": 100}, "resolution"), ({"devices": 2}, "devices")])
def test_invalid_config_fails_with_a_message_naming_the_field(env, patch, field):
    store, artifacts, _ = env
    job = create_job(store, artifacts, {**CONFIG, **patch})
    tasks.finetune(job.id)
    job = store.get(job.id)
    assert job.status == JobStatus.failed
    assert job.error.code == "invalid_config" and field in job.error.message


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes_fails_clearly(env):
    store, artifacts, _ = env
    job = create_job(store, artifacts, {**CONFIG, "use_8bit_adam": True})
    tasks.finetune(job.id)
    job = store.get(job.id)
    assert job.status == JobStatus.failed and job.error.code == "invalid_config"
    assert "use_8bit_adam" in job.error.message and "bitsandbytes" in job.error.message


@pytest.mark.parametrize("images, message", [
    ([_png((1, 2, 3))] * 2, "3 to 20 instance images"),
    ([_png((1, 2, 3))] * 2 + [b"garbage"], "image 2: not a readable image"),
    ([_png((1, 2, 3))] * 2 + [_png((1, 2, 3), size=(20, 20))], "image 2: 20x20 px is too small"),
])
def test_bad_instance_images_fail_clearly(env, images, message):
    store, artifacts, _ = env
    job = create_job(store, artifacts, CONFIG, images=images)
    tasks.finetune(job.id)
    job = store.get(job.id)
    assert job.status == JobStatus.failed and job.error.code == "invalid_input"
    assert message in job.error.message


def test_remote_artifact_store_mirrors_checkpoints_and_uploads_the_model(env, monkeypatch):
    store, _, settings = env
    url = f"memory://detbooth-test-{uuid.uuid4().hex[:8]}"  # fsspec's in-process store: not a local folder
    remote = ArtifactStore(url)
    monkeypatch.setattr(tasks, "settings", settings.model_copy(update={"artifacts_url": url}))
    assert not remote.is_local
    job = create_job(store, remote, {**CONFIG, "with_prior_preservation": False})
    tasks.finetune(job.id)
    job = store.get(job.id)
    assert job.status == JobStatus.succeeded, job.error
    assert remote.list(f"jobs/{job.id}/checkpoints") == []  # mirrored while training, removed on success
    assert remote.list(f"jobs/{job.id}/inputs") == []
    assert remote.size(job.result["model"]) > 0
    assert f"jobs/{job.id}/logs/csv/metrics.csv" in remote.list(f"jobs/{job.id}/logs")
