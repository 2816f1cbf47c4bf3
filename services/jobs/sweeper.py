"""The sweeper: a finished job's files expire with its record, and nothing in the artifact store is orphaned.

A folder `jobs/<id>` is removed when its job is gone and no fine-tuned model lives there:
- at once when the job was deleted (its tombstone): a worker that was still writing leaves nothing behind;
- otherwise once its newest file is older than `orphan_grace_s`: the job record expired with the job TTL,
  or a crash left files of a job that was never created (the grace covers a submit in flight, whose inputs
  are written just before its record).

It runs as a thread in the gateway (every `sweep_interval_s`, one replica at a time under a Redis lock):
the gateway is always up and already holds the artifact store, while workers spend their time on GPU tasks.
A store whose "indexed" marker is missing (Redis lost its data) is reindexed before anything is swept, so
models are never taken for orphans.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from services.jobs.artifacts import ArtifactStore
from services.jobs.interface import JobSystem
from services.jobs.reindex import ensure_indexed

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    removed: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    skipped: bool = False


def sweep(system: JobSystem, artifacts: ArtifactStore, *, grace_s: float, tombstone_ttl_s: float = 86400,
          now: float | None = None) -> SweepReport:
    report = SweepReport()
    ensure_indexed(system, artifacts)
    now = time.time() if now is None else now
    ids = artifacts.children("jobs")
    alive = system.live_ids(ids)
    deleted = system.deleted_ids()
    for job_id in ids:
        if job_id in alive:
            continue
        if job_id not in deleted:
            _, newest = artifacts.usage(f"jobs/{job_id}")
            if now - newest < grace_s:
                report.kept_young.append(job_id)
                continue
        artifacts.delete(f"jobs/{job_id}")
        system.drop_storage(job_id)
        report.removed.append(job_id)
    system.forget_deleted(older_than=now - tombstone_ttl_s)
    if report.removed:
        log.info("sweeper: removed the files of %d expired, deleted or orphaned job(s)", len(report.removed))
    return report


class Sweeper:
    """A daemon thread that sweeps every `interval_s` while it holds the sweep lock."""

    def __init__(self, system: JobSystem, artifacts: ArtifactStore, *, interval_s: float, grace_s: float):
        self.system, self.artifacts = system, artifacts
        self.interval_s, self.grace_s = interval_s, grace_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="artifact-sweeper", daemon=True)

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self) -> SweepReport:
        # one sweep per interval across replicas: the lock lapses just before this replica's next turn
        if not self.system.try_lock("sweep", ttl_s=max(1, int(self.interval_s * 0.9))):
            return SweepReport(skipped=True)
        return sweep(self.system, self.artifacts, grace_s=self.grace_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # Redis or the store away: try again next time
                log.warning("sweeper: this sweep failed", exc_info=True)
