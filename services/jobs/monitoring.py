"""What operators watch, kept in Redis so every gateway sees every worker: worker heartbeats (per queue, with
GPU memory where CUDA is present), running jobs, and how finished jobs ended and how long they ran.

Workers write their heartbeat from a thread in the Celery main process (started by `install_worker_beat`); the
job store records each status change here (`JobStats.record`). The gateway reads both for `/readyz` and
`/metrics` without asking the workers anything, so neither route waits on a busy or dead worker.
"""

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable

import redis
from pydantic import BaseModel, Field

from services.jobs.keys import Keys

log = logging.getLogger(__name__)

# seconds; a fine-tune runs minutes to hours, a generation seconds
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)
TERMINAL = ("succeeded", "failed", "canceled")

# KEYS: running-jobs set of the job's type, stats hash. ARGV: job id, new status, type, duration ("" = none),
# then the names of the histogram buckets the duration falls in. A job is in the running set exactly while its
# status is `running`; a terminal status counts the outcome and its duration once.
_RECORD = """
if ARGV[2] == 'running' then redis.call('SADD', KEYS[1], ARGV[1]) else redis.call('SREM', KEYS[1], ARGV[1]) end
if ARGV[2] == 'succeeded' or ARGV[2] == 'failed' or ARGV[2] == 'canceled' then
  local key = ARGV[3] .. ':' .. ARGV[2]
  redis.call('HINCRBY', KEYS[2], 'count:' .. key, 1)
  if ARGV[4] ~= '' then
    redis.call('HINCRBY', KEYS[2], 'timed:' .. key, 1)
    redis.call('HINCRBYFLOAT', KEYS[2], 'sum:' .. key, ARGV[4])
    for i = 5, #ARGV do redis.call('HINCRBY', KEYS[2], 'le:' .. key .. ':' .. ARGV[i], 1) end
  end
end
return 1
"""

# KEYS: worker index (sorted by last beat), worker record. ARGV: name, now, record json, record ttl s,
# forget-after s. Workers silent for longer than forget-after are dropped from the index.
_BEAT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[5]))
return 1
"""


def buckets_for(duration_s: float) -> list[str]:
    """The cumulative histogram buckets (`le` labels) a duration falls in."""
    return [f"{b:g}" for b in DURATION_BUCKETS if duration_s <= b]


class GpuMemory(BaseModel):
    index: str
    used_bytes: int
    total_bytes: int


class WorkerBeat(BaseModel):
    name: str
    queues: list[str]
    pid: int
    host: str
    active: int = Field(default=0, description="tasks running now")
    gpus: list[GpuMemory] = Field(default_factory=list)
    at: float = 0.0


class WorkerStatus(BaseModel):
    name: str
    queues: list[str]
    up: bool
    last_beat_s_ago: float
    active: int
    gpus: list[GpuMemory]


class JobStats:
    """Running jobs and finished-job outcomes/durations, per job type."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.r = client
        self.keys = Keys(prefix)
        self._record = client.register_script(_RECORD)

    def record(self, job_id: str, job_type: str, status: str, duration_s: float | None = None) -> None:
        dur = "" if duration_s is None else repr(max(0.0, duration_s))
        buckets = buckets_for(duration_s) if duration_s is not None else []
        self._record(keys=[self.keys.stats_running(job_type), self.keys.stats_jobs],
                     args=[job_id, status, job_type, dur, *buckets])

    def running(self, job_types: Iterable[str]) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        types = list(job_types)
        for t in types:
            pipe.scard(self.keys.stats_running(t))
        return dict(zip(types, pipe.execute()))

    def finished(self) -> dict[str, dict]:
        """{"<type>:<status>": {"count", "timed", "sum", "buckets": {le: cumulative count}}}."""
        out: dict[str, dict] = {}
        for raw_k, raw_v in self.r.hgetall(self.keys.stats_jobs).items():
            kind, _, rest = raw_k.decode().partition(":")
            if kind == "le":
                key, _, le = rest.rpartition(":")
                out.setdefault(key, {}).setdefault("buckets", {})[le] = int(raw_v)
            else:
                out.setdefault(rest, {})[kind] = float(raw_v) if kind == "sum" else int(raw_v)
        return out


class WorkerRegistry:
    """Worker heartbeats: a worker is up while its last beat is younger than `ttl_s`."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float = 15.0, forget_after_s: float = 3600.0):
        self.r = client
        self.keys = Keys(prefix)
        self.ttl_s = ttl_s
        self.forget_after_s = forget_after_s
        self._beat = client.register_script(_BEAT)

    def beat(self, beat: WorkerBeat) -> None:
        beat = beat.model_copy(update={"at": time.time()})
        self._beat(keys=[self.keys.workers, self.keys.worker(beat.name)],
                   args=[beat.name, beat.at, beat.model_dump_json(), max(1, int(self.forget_after_s)),
                         self.forget_after_s])

    def leave(self, name: str) -> None:
        """A worker that shuts down cleanly is down at once, not a heartbeat timeout later."""
        self.r.zadd(self.keys.workers, {name: time.time() - self.ttl_s}, xx=True)  # listed, as down, until forgotten

    def workers(self) -> list[WorkerStatus]:
        now = time.time()
        rows = self.r.zrangebyscore(self.keys.workers, now - self.forget_after_s, "+inf", withscores=True)
        names = [n.decode() for n, _ in rows]
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.get(self.keys.worker(n))
        out = []
        for (name, at), raw in zip(zip(names, (s for _, s in rows)), pipe.execute()):
            beat = WorkerBeat.model_validate_json(raw) if raw else None
            out.append(WorkerStatus(name=name, queues=beat.queues if beat else [], up=now - at < self.ttl_s,
                                    last_beat_s_ago=round(now - at, 1), active=beat.active if beat else 0,
                                    gpus=beat.gpus if beat else []))
        return out

    def by_queue(self, queues: Iterable[str]) -> dict[str, dict]:
        """Per queue: up (at least one worker up), and the workers that serve it, up or down."""
        workers = self.workers()
        out = {}
        for q in queues:
            serving = [w for w in workers if q in w.queues]
            out[q] = {"up": any(w.up for w in serving), "workers_up": sum(w.up for w in serving),
                      "workers": [{"name": w.name, "up": w.up, "last_beat_s_ago": w.last_beat_s_ago}
                                  for w in serving]}
        return out


def queue_depths(celery_app, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each Celery queue, counted by Kombu itself (all priority lists, key prefix)."""
    with celery_app.connection_for_read() as conn:
        channel = conn.default_channel
        return {q: channel.queue_declare(queue=q, passive=False, durable=True, auto_delete=False).message_count
                for q in queues}


def parse_nvidia_smi(text: str) -> list[GpuMemory]:
    """`nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits` (MiB)."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(GpuMemory(index=parts[0], used_bytes=int(parts[1]) * 2**20,
                                  total_bytes=int(parts[2]) * 2**20))
    return gpus


def gpu_memory() -> list[GpuMemory]:
    """Memory of the GPUs this process may use. Asks nvidia-smi rather than CUDA: a Celery main process must
    not create a CUDA context, or its forked pool children could not use CUDA."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    cmd = [exe, "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        cmd.append(f"--id={visible}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []


class WorkerBeatThread:
    """Beats every `interval_s` until stopped; Redis being away only skips beats."""

    def __init__(self, registry: WorkerRegistry, name: str, queues: list[str], interval_s: float,
                 active=lambda: 0):
        self.registry = registry
        self.name = name
        self.queues = queues
        self.interval_s = interval_s
        self.active = active
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-beat", daemon=True)

    def beat(self) -> None:
        self.registry.beat(WorkerBeat(name=self.name, queues=self.queues, pid=os.getpid(),
                                      host=socket.gethostname(), active=self.active(), gpus=gpu_memory()))

    def _loop(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as e:
                log.warning("worker heartbeat failed: %s", type(e).__name__)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.registry.leave(self.name)
        except redis.RedisError:
            pass


def install_worker_beat(app, client_factory, prefix: str, interval_s: float, ttl_s: float) -> None:
    """Connect Celery's worker signals so each worker main process beats while it runs."""
    from celery import signals
    from celery.worker import state

    beats: list[WorkerBeatThread] = []

    @signals.worker_ready.connect(weak=False)
    def _start(sender, **_):
        if sender.app is not app:
            return
        queues = sorted(q.name for q in sender.task_consumer.queues) if sender.task_consumer else []
        thread = WorkerBeatThread(WorkerRegistry(client_factory(), prefix, ttl_s), sender.hostname, queues,
                                  interval_s, active=lambda: len(state.active_requests))
        thread.start()
        beats.append(thread)

    @signals.worker_shutdown.connect(weak=False)
    def _stop(sender, **_):
        while beats:
            beats.pop().stop()


def monitoring_client(redis_url: str) -> redis.Redis:
    """A client with short timeouts: health and metrics answer quickly even while Redis struggles."""
    return redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
