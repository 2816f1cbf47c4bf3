"""`python -m services.stack` (what `make run` runs): embedded Redis, every service up, supervision, clean stop."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.e2e.test_dreambooth_e2e import subject_png
from tests.procs import ROOT, free_port


def workers(parent: int) -> list[psutil.Process]:
    """The live Celery worker main processes that `parent` started."""
    found = []
    for p in psutil.Process(parent).children():
        try:
            if "celery" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # exited (a zombie until the supervisor reaps it)
            pass
    return found


def queue_of(worker: psutil.Process) -> str:
    cmd = worker.cmdline()
    return cmd[cmd.index("-Q") + 1]


def generation_while_a_finetune_trains(url: str, headers: dict[str, str]) -> None:
    """Separate worker pools: a generation request completes while a long fine-tune holds its worker."""
    files = [("images", (f"{i}.png", subject_png(i), "image/png")) for i in range(3)]
    config = {"instance_prompt": "a photo of sks dog", "with_prior_preservation": False, "method": "lora",
              "resolution": 64, "max_train_steps": 5000, "checkpoint_every": 5000, "seed": 1}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        r = client.post("/finetune", files=files, data={"config": json.dumps(config)})
        assert r.status_code == 202, r.text
        tune = r.json()["id"]
        deadline = time.monotonic() + 300
        while (job := client.get(f"/jobs/{tune}").json())["progress"]["step"] < 1:
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.5)
        r = client.post("/generate", headers={"Prefer": "wait=60"},
                        json={"prompt": "a photo of a dog", "width": 64, "height": 64, "num_inference_steps": 2,
                              "seed": 3})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        job = client.get(f"/jobs/{tune}").json()
        assert job["status"] == "running" and job["progress"]["step"] < 5000, job
        assert client.post(f"/jobs/{tune}/cancel").status_code == 200
        deadline = time.monotonic() + 60
        while client.get(f"/jobs/{tune}").json()["status"] != "canceled":
            assert time.monotonic() < deadline
            time.sleep(0.5)


@pytest.mark.slow
def test_stack_starts_everything_restarts_the_dead_and_stops_cleanly(tmp_path):
    gw, det, dead_redis = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETBOOTH_")}
    env.update({"DETBOOTH_REDIS_URL": f"redis://127.0.0.1:{dead_redis}/0",  # nothing there: embedded Redis
                "DETBOOTH_DATA_DIR": str(tmp_path / "data"), "DETBOOTH_GATEWAY_PORT": str(gw),
                "DETBOOTH_DETECTION_PORT": str(det), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                # make run's defaults (auto precision: quantize, then guard), on a small set: the guard's own
                # figures are tested in tests/integration/detection/test_precision.py
                "DETBOOTH_DETECTION_GUARD_IMAGES": "4", "DETBOOTH_DETECTION_CALIBRATION_IMAGES": "4",
                "DETBOOTH_DETECTION_GUARD_REAL_IMAGES": "false", "DETBOOTH_DETECTION_TEXTSET_MAX_SIDE": "480"})
    log = open(tmp_path / "stack.log", "wb")
    stack = subprocess.Popen([sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        text = ""
        while "DetBooth is up" not in text:
            assert stack.poll() is None, (tmp_path / "stack.log").read_text()
            assert time.monotonic() < deadline, text
            time.sleep(1)
            text = (tmp_path / "stack.log").read_text()
        key = re.search(r"API key: (\S+)", text).group(1)
        assert key == (tmp_path / "data" / "api_key").read_text().strip()
        h = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"http://127.0.0.1:{gw}/models", headers=h).status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{gw}/readyz").json()
        assert ready["ready"] and ready["checks"]["detection"]["ok"], ready
        assert all(ready["checks"]["workers"][q]["workers_up"] == 1 for q in ("finetune", "generate")), ready
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 5  # redis, detection, two workers (+ their pools), gateway
        generation_while_a_finetune_trains(f"http://127.0.0.1:{gw}", h)
        # a dead gateway is started again
        gateway = next(p for p in children if "gateway" in " ".join(p.cmdline()))
        gateway.kill()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{gw}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "stack.log").read_text()
            time.sleep(0.5)
        assert "gateway exited" in (tmp_path / "stack.log").read_text()
        # so is a dead Celery worker (its main process killed: its pool child dies with it)
        assert sorted(queue_of(w) for w in workers(stack.pid)) == ["finetune", "generate"]
        worker = next(w for w in workers(stack.pid) if queue_of(w) == "generate")
        worker.kill()
        deadline = time.monotonic() + 120
        while not [p for p in workers(stack.pid) if p.pid != worker.pid and queue_of(p) == "generate"]:
            assert time.monotonic() < deadline, (tmp_path / "stack.log").read_text()
            time.sleep(0.5)
        assert "worker-generate exited" in (tmp_path / "stack.log").read_text()
        children = psutil.Process(stack.pid).children(recursive=True)
    finally:
        stack.send_signal(signal.SIGTERM)
        code = stack.wait(60)
    assert code == 0
    time.sleep(0.5)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


# ---------------------------------------------------------------- stopping cleanly, however it is asked


def small_stack_env(tmp_path) -> tuple[dict[str, str], list[int]]:
    """`make run`'s environment for a quick start: its own ports, an embedded Redis, one small detection
    bucket; returns the environment and the stack's ports (gateway, detection, Redis)."""
    gw, det, rds = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETBOOTH_")}
    env.update({"DETBOOTH_REDIS_URL": f"redis://127.0.0.1:{rds}/0", "DETBOOTH_DATA_DIR": str(tmp_path / "data"),
                "DETBOOTH_GATEWAY_PORT": str(gw), "DETBOOTH_DETECTION_PORT": str(det),
                "DETBOOTH_DETECTION_BUCKET_SIDES": "[320]", "DETBOOTH_DETECTION_ALLOW_DOWNLOAD": "false",
                "DETBOOTH_DETECTION_PADDLEX_CACHE_DIR": str(tmp_path / "no-paddlex-cache"),
                "DETBOOTH_DETECTION_CPU_THREADS": "1", "DETBOOTH_DETECTION_PRECISION": "fp32",
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return env, [gw, det, rds]


def make_run(tmp_path, env: dict[str, str]) -> subprocess.Popen:
    """The real `make run` in a process group of its own (as a terminal, systemd or a CI runner starts it).
    `-o` takes the install stamps as up to date, so make runs only the recipe even when the Makefile is
    newer than the last install."""
    log = open(tmp_path / "stack.log", "wb")
    return subprocess.Popen(["make", "--no-print-directory", "-o", ".venv/.installed", "-o", ".venv/.fonts",
                             "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_log(proc: subprocess.Popen, path, text: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := path.read_text(errors="replace")):
        assert proc.poll() is None, log
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    return log


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_everything_stopped(procs: list[psutil.Process], ports: list[int], log_path) -> str:
    """Every process the stack started is gone (not even a zombie), every port free, no traceback."""
    _, alive = psutil.wait_procs(procs, timeout=90)
    log = log_path.read_text(errors="replace")
    assert not alive, f"still running: {[p.info if hasattr(p, 'info') else p for p in alive]}\n{log}"
    assert not [p for p in ports if listening(p)], log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert "stopped" in log, log
    return log


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice-within-100ms"])
def test_sigterm_to_make_runs_process_group_stops_every_child(tmp_path, signals):
    env, ports = small_stack_env(tmp_path)
    make = make_run(tmp_path, env)
    try:
        up = wait_for_log(make, tmp_path / "stack.log", "Ctrl-C stops everything")
        assert all(listening(p) for p in ports)
        # one line says what it serves, and that the tiny Stable Diffusion draws noise
        [models] = [line for line in up.splitlines() if line.startswith("  Models:")]
        assert re.match(r"  Models:  detection PP-OCR\S+_det", models), models
        assert "Stable Diffusion tiny (random weights: it draws noise" in models, models
        family = psutil.Process(make.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        for part in ("services.stack", "services.detection", "celery", "gateway", "valkey-server"):
            assert part in names, names
        for i in range(signals):
            if i:
                time.sleep(0.05)
            os.killpg(make.pid, signal.SIGTERM)
        log = assert_everything_stopped(family, ports, tmp_path / "stack.log")
        # stopping started nothing again
        assert "started" not in log.split("stopping (a second one kills")[1], log
    finally:
        try:
            os.killpg(make.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        make.wait(10)


@pytest.mark.slow
def test_sigint_while_starting_starts_nothing_more(tmp_path):
    """SIGINT to the supervisor alone (`kill -INT PID`) while the detection service is still loading: the
    started children stop, nothing else starts, no traceback."""
    env, ports = small_stack_env(tmp_path)
    log = open(tmp_path / "stack.log", "wb")
    stack = subprocess.Popen([sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_log(stack, tmp_path / "stack.log", "started detection", timeout=120)
        family = psutil.Process(stack.pid).children(recursive=True)
        stack.send_signal(signal.SIGINT)
        assert stack.wait(60) == 0
        text = assert_everything_stopped(family, ports, tmp_path / "stack.log")
        assert "SIGINT: stopping" in text
        assert "started worker" not in text and "started gateway" not in text, text
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait(10)
