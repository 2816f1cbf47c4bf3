"""What the fault tests share: short broker settings, a tiny fine-tune, waiting on jobs, checking artifacts."""

import json
import time
from pathlib import Path

import httpx
import psutil

from tests.e2e.test_dreambooth_e2e import subject_png

# a dead worker's task comes back within ~visibility timeout + restore interval; the lease lapses before that
FAST_REDELIVERY = {"DETBOOTH_VISIBILITY_TIMEOUT_S": "10", "DETBOOTH_UNACKED_RESTORE_INTERVAL_S": "1",
                   "DETBOOTH_TASK_HEARTBEAT_S": "1", "DETBOOTH_JOB_LEASE_S": "5"}

# the e2e test's tiny fine-tune, long enough to be killed in the middle: checkpoints every 2 steps
FINETUNE = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "method": "lora",
            "resolution": 64, "max_train_steps": 24, "num_class_images": 2, "class_images_inference_steps": 2,
            "checkpoint_every": 2, "keep_last_checkpoints": 2, "seed": 1}


def submit_finetune(client: httpx.Client, **overrides) -> str:
    files = [("images", (f"{i}.png", subject_png(i), "image/png")) for i in range(3)]
    r = client.post("/finetune", files=files, data={"config": json.dumps({**FINETUNE, **overrides})})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_job(client: httpx.Client, job_id: str, until, timeout: float = 300, what: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        assert job.get("status") not in ("failed", "canceled"), job
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {job}"
        time.sleep(0.2)


def finished(job: dict) -> bool:
    return job.get("status") in ("succeeded", "failed", "canceled")


def pool_children(main_pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(main_pid).children()
    except psutil.NoSuchProcess:
        return []


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files (atomic writes that never finished)."""
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part")]
