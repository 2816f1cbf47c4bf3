"""/readyz shows the workers per queue, up or down, and /metrics the job system, from a real Celery worker's
heartbeats in the real Redis (the gateway in-process)."""

import os
import re
import signal
import time

from tests.procs import base_env, inprocess_gateway, start_worker


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return None


def readyz_workers(gw) -> dict:
    return gw.get("/readyz").json()["checks"]["workers"]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return got


def test_workers_per_queue_up_then_down_when_killed(redis_server, logs_dir, tmp_path, procs):
    env = base_env(redis_server, tmp_path / "data", DETBOOTH_WORKER_HEARTBEAT_S="0.5")
    with inprocess_gateway(env) as gw:
        workers = readyz_workers(gw)
        assert workers == {q: {"up": False, "workers_up": 0, "workers": []} for q in ("finetune", "generate")}
        assert metric(gw.get("/metrics").text, "detbooth_workers_up", queue="generate") == 0

        worker = start_worker(env, logs_dir, queues="generate")
        procs.append(worker)
        workers = wait_for(lambda: (w := readyz_workers(gw))["generate"]["up"] and w, 30,
                           "the generate worker to show up")
        assert workers["finetune"]["up"] is False  # nobody serves fine-tunes
        [seen] = workers["generate"]["workers"]
        assert seen["up"] and seen["name"].startswith("test-")
        text = gw.get("/metrics").text
        assert metric(text, "detbooth_workers_up", queue="generate") == 1
        assert metric(text, "detbooth_workers_up", queue="finetune") == 0

        os.killpg(worker.pid, signal.SIGKILL)  # no clean goodbye: its beats stop
        workers = wait_for(lambda: not (w := readyz_workers(gw))["generate"]["up"] and w, 10,
                           "the killed worker to be reported down")
        assert [w["up"] for w in workers["generate"]["workers"]] == [False]
        assert gw.get("/readyz").json()["ready"] is True  # the gateway itself still takes jobs


def test_metrics_count_queue_depth_running_and_finished_jobs(worker_stack):
    gw = worker_stack
    r = gw.post("/generate", headers={"Prefer": "wait=60"},
                json={"prompt": "a photo of a dog", "num_inference_steps": 1, "width": 64, "height": 64})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    text = gw.get("/metrics").text
    assert metric(text, "detbooth_jobs_finished_total", type="generate", status="succeeded") >= 1
    count = metric(text, "detbooth_job_duration_seconds_count", type="generate", status="succeeded")
    assert count == metric(text, "detbooth_jobs_finished_total", type="generate", status="succeeded")
    assert metric(text, "detbooth_job_duration_seconds_bucket", type="generate", status="succeeded",
                  le="+Inf") == count
    assert metric(text, "detbooth_job_duration_seconds_sum", type="generate", status="succeeded") > 0
    assert metric(text, "detbooth_jobs_running", type="generate") == 0
    assert metric(text, "detbooth_workers_up", queue="generate") == 1

    small = {"prompt": "x", "num_inference_steps": 1, "width": 64, "height": 64}
    ids = [gw.post("/generate", json=small).json()["id"] for _ in range(2)]
    text = gw.get("/metrics").text
    assert metric(text, "detbooth_queue_depth", queue="generate") in (0, 1, 2)  # the worker takes them meanwhile
    assert metric(text, "detbooth_queue_depth", queue="finetune") == 0
    for i in ids:
        gw.post(f"/jobs/{i}/cancel")
