"""What the gateway runs beside its routes: the recovery check at start, the artifact sweeper, and the
webhook dispatcher. Each is a daemon thread that only talks to the job system and the artifact store."""

import logging
from collections.abc import Callable

from services.jobs.artifacts import ArtifactStore
from services.jobs.redis_system import RedisJobSystem
from services.jobs.reindex import ensure_indexed
from services.jobs.settings import JobSettings
from services.jobs.sweeper import Sweeper
from services.jobs.webhooks import start_webhook_dispatcher

log = logging.getLogger("gateway")


def warn_without_persistence(system: RedisJobSystem) -> None:
    """Redis without AOF or RDB snapshots loses every job on restart: say so once, loudly."""
    try:
        conf = system.persistence()
    except Exception as e:  # Redis not up yet: /readyz says so; nothing to warn about here
        log.info("could not read the Redis persistence settings: %s", type(e).__name__)
        return
    if conf is None:
        log.info("Redis does not allow CONFIG GET; make sure it persists its data (appendonly or save)")
    elif conf.get("appendonly", "no") != "yes" and not conf.get("save", "").strip():
        log.warning("Redis runs WITHOUT persistence (appendonly no, save \"\"): a Redis restart loses every job "
                    "record; fine-tuned models are rebuilt from the artifact store, job records and generated "
                    "images are not. Run Redis with --appendonly yes")


def start_background(system: RedisJobSystem, artifacts: ArtifactStore, settings: JobSettings) -> Callable[[], None]:
    """Start the background work; returns the function that stops it."""
    warn_without_persistence(system)
    try:
        ensure_indexed(system, artifacts)
    except Exception:  # Redis or the store not reachable yet: the sweeper retries before each sweep
        log.warning("recovery check at start failed; the sweeper will retry", exc_info=True)
    sweeper = Sweeper(system, artifacts, interval_s=settings.sweep_interval_s,
                      grace_s=settings.orphan_grace_s).start()
    dispatcher = start_webhook_dispatcher(system.webhook_outbox(settings.webhook_progress_interval_s), settings)

    def stop() -> None:
        sweeper.stop()
        if dispatcher is not None:
            dispatcher.stop()

    return stop
