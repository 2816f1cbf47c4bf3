"""A real detection service: ``python -m services.detection`` under uvicorn, on a loopback socket that the
fixture binds (port 0) and hands to the child, so parallel test runs never race for a port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]


class DetectionServer:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.detection", "--fd", str(self.sock.fileno())],
            env={**os.environ, **env}, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            pass_fds=(self.sock.fileno(),), start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"detection service exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()
                if r.json().get("state") == "setup_failed":
                    raise RuntimeError(f"setup failed: {r.json()}\n{self.log()[-4000:]}")
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"detection service not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        self.sock.close()
        return self.proc.returncode


def service_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {
        "DETBOOTH_DETECTION_MODEL": "PP-OCRv5_server_det",
        "DETBOOTH_DETECTION_PADDLEX_CACHE_DIR": str(tmp / "paddlex"),  # empty: this machine's cache can't leak in
        "DETBOOTH_DETECTION_ALLOW_DOWNLOAD": "false",
        "DETBOOTH_DETECTION_BUCKET_SIDES": "[320, 480, 640]",
        "DETBOOTH_DETECTION_CPU_THREADS": "2",
        "DETBOOTH_DETECTION_MAX_BATCH_SIZE": "8",
        "DETBOOTH_DETECTION_MAX_QUEUE_DELAY_MS": "5",
        # the PP-OCRv5 mobile det fallback on ONNX Runtime: the RapidOCR-equality tests run its very file
        "DETBOOTH_DETECTION_ENGINE": "onnxruntime",
        "DETBOOTH_DETECTION_PRECISION": "fp32",  # exact and quick to start; test_precision.py covers the guard
    }
    return env | {f"DETBOOTH_DETECTION_{k.upper()}": v for k, v in overrides.items()}


@pytest.fixture(scope="session")
def start_detection(tmp_path_factory) -> Iterator:
    servers: list[DetectionServer] = []

    def start(env: dict[str, str] | None = None, **overrides: str) -> DetectionServer:
        """``overrides`` are DETBOOTH_DETECTION_* settings; ``env`` other variables (e.g. the shared limits)."""
        tmp = tmp_path_factory.mktemp("detection")
        server = DetectionServer(service_env(tmp, **overrides) | (env or {}), tmp / "service.log")
        servers.append(server)
        server.readiness = server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def detection(detection_service) -> DetectionServer:
    """The default service: offline, so PP-OCRv5_server_det falls back to PP-OCRv5 mobile det on onnxruntime.
    The session's one (tests/procs.py), which the gateway, CLI, console and fault tests also use."""
    return detection_service
