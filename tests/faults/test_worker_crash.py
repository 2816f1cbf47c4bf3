"""A worker killed in the middle of a job: the task comes back, resumes, succeeds once, nothing half-written."""

import os
import signal
import time

import pytest

from services.dreambooth.train.callbacks import list_checkpoints
from tests.faults.support import (
    FAST_REDELIVERY,
    finished,
    leftovers,
    pool_children,
    submit_finetune,
    wait_gone,
    wait_job,
)
from tests.integration.conftest import ALICE, base_env
from tests.procs import inprocess_gateway, start_worker

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(redis_server, logs_dir, tmp_path, procs):
    """A real worker process to kill, and the gateway in-process to watch its jobs."""
    env = base_env(redis_server, tmp_path / "data", **FAST_REDELIVERY)
    worker = start_worker(env, logs_dir)
    procs.append(worker)
    with inprocess_gateway(env, headers=ALICE) as client:
        yield client, env, worker, tmp_path / "data" / "artifacts"


def _kill_after_checkpoint(client, job_id, artifacts) -> int:
    """Wait for a checkpoint of a running fine-tune; return its step."""
    ckpts = artifacts / "jobs" / job_id / "checkpoints"
    wait_job(client, job_id, lambda j: j["status"] == "running" and list_checkpoints(ckpts), timeout=240,
             what="a first checkpoint")
    return max(int(p.stem.split("-")[1]) for p in list_checkpoints(ckpts))


def _check_resumed_once(client, job_id, artifacts, killed_at_step, fault_note, t_kill):
    job = wait_job(client, job_id, finished, timeout=300, what="the job to finish")
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2, job
    result = job["result"]
    assert result["resumed_from_step"] is not None and result["resumed_from_step"] >= killed_at_step > 0
    assert result["steps"] == 24
    folder = artifacts / "jobs" / job_id
    assert not leftovers(folder), leftovers(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "logs", "model", "model.json"]  # no checkpoints
    assert sorted(p.name for p in (folder / "model").iterdir()) == ["pytorch_lora_weights.safetensors"]
    models = [m["id"] for m in client.get("/models").json()["models"]]
    assert models.count(job_id) == 1
    events = client.get(f"/jobs/{job_id}/events").text
    assert events.count('"status": "succeeded"') == 1
    fault_note(f"killed at step≥{killed_at_step}, resumed from {result['resumed_from_step']}, "
               f"attempts {job['attempts']}, done {time.monotonic() - t_kill:.0f}s after the kill")


@pytest.mark.fault("worker child SIGKILL mid fine-tune",
                   "redelivered at once, resumes from newest checkpoint, attempts 2, no partial artifacts")
def test_killed_pool_child_mid_finetune_resumes(stack, fault_note):
    client, _env, worker, artifacts = stack
    job_id = submit_finetune(client)
    step = _kill_after_checkpoint(client, job_id, artifacts)
    [child] = pool_children(worker.pid)
    t_kill = time.monotonic()
    os.kill(child.pid, signal.SIGKILL)
    assert worker.alive()
    _check_resumed_once(client, job_id, artifacts, step, fault_note, t_kill)


@pytest.mark.fault("worker MAIN SIGKILL mid fine-tune",
                   "new worker gets it within visibility timeout, resumes, attempts 2, no partial artifacts")
def test_killed_worker_main_process_mid_finetune_resumes_on_a_new_worker(stack, logs_dir, procs, fault_note):
    client, env, worker, artifacts = stack
    job_id = submit_finetune(client)
    step = _kill_after_checkpoint(client, job_id, artifacts)
    [child] = pool_children(worker.pid)
    t_kill = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    assert wait_gone(child.pid), "the pool child outlived its parent"
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"  # nobody told the store
    procs.append(start_worker(env, logs_dir))
    _check_resumed_once(client, job_id, artifacts, step, fault_note, t_kill)


@pytest.mark.fault("worker MAIN SIGKILL mid generation",
                   "new worker runs it again, succeeds once, attempts 2, images 0..n-1 only")
def test_killed_worker_mid_generation_completes_once(stack, logs_dir, procs, fault_note):
    client, env, worker, artifacts = stack
    r = client.post("/generate", json={"prompt": "a photo of a dog", "width": 64, "height": 64, "seed": 3,
                                       "num_inference_steps": 30, "num_images": 2, "guidance_scale": 5.0})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_job(client, job_id, lambda j: j["status"] == "running" and (j.get("progress") or {}).get("step", 0) >= 2,
             timeout=240, what="generation to be under way")
    [child] = pool_children(worker.pid)
    t_kill = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    assert wait_gone(child.pid)
    procs.append(start_worker(env, logs_dir))
    job = wait_job(client, job_id, finished, timeout=300, what="generation to finish")
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert [i["seed"] for i in job["result"]["images"]] == [3, 4]
    folder = artifacts / "jobs" / job_id
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["0.png", "1.png"]
    assert not leftovers(folder)
    assert client.get(f"/jobs/{job_id}/events").text.count('"status": "succeeded"') == 1
    fault_note(f"done {time.monotonic() - t_kill:.0f}s after the kill, attempts {job['attempts']}")
