"""Celery task bodies of the DreamBooth worker. Each only wires: build what the job needs and run it."""

import logging

from services.contracts.jobs import Job
from services.jobs.celery_app import make_celery
from services.jobs.lifecycle import run_task
from services.jobs.monitoring import install_worker_beat, monitoring_client
from services.jobs.redis_system import RedisJobSystem
from services.jobs.settings import JobSettings
from services.jobs.tasks import FINETUNE_TASK, GENERATE_TASK

log = logging.getLogger(__name__)

settings = JobSettings()
app = make_celery(settings)
_store = None
install_worker_beat(app, lambda: monitoring_client(settings.redis_url), settings.key_prefix,
                    settings.worker_heartbeat_s, ttl_s=3 * settings.worker_heartbeat_s)


def job_store():
    global _store
    if _store is None:
        _store = RedisJobSystem.from_settings(settings, celery=app)
    return _store


def _finetune_body(job: Job) -> dict:
    from services.dreambooth.settings import DreamboothSettings
    from services.dreambooth.train.job import run_finetune_job  # torch loads in the worker only
    from services.jobs.artifacts import ArtifactStore

    db = DreamboothSettings()
    return run_finetune_job(job, job_store(), ArtifactStore(settings.artifacts_location), settings.data_dir,
                            base_model_spec=db.sd_base_model, single_file_config=db.sd_single_file_config,
                            class_cache_bytes=int(db.class_images_cache_gb * 1e9))


def _generate_body(job: Job) -> dict:
    from services.dreambooth.generate import worker_for  # torch loads in the worker only

    return worker_for(settings, job_store()).run(job)


def _run(task, job_id: str, body) -> None:
    try:
        run_task(task, job_store(), settings, job_id, body)
    finally:
        _settle(job_id)


def _settle(job_id: str) -> None:
    """Count the job's files for its owner, or remove them when the job was deleted while it ran."""
    from services.jobs.artifacts import ArtifactStore
    from services.jobs.deletion import settle_artifacts

    try:
        settle_artifacts(job_store(), ArtifactStore(settings.artifacts_location), job_id)
    except Exception:  # bookkeeping only: the sweeper catches what this misses
        log.warning("could not settle the files of job %s", job_id, exc_info=True)


@app.task(name=FINETUNE_TASK, bind=True, max_retries=None)
def finetune(self, job_id: str) -> None:
    _run(self, job_id, _finetune_body)


@app.task(name=GENERATE_TASK, bind=True, max_retries=None)
def generate(self, job_id: str) -> None:
    _run(self, job_id, _generate_body)
