"""Deleting a job or a fine-tuned model together with every file it has in the artifact store.

Order matters, so that nothing is left behind and nothing half-deleted stays reachable:
1. a queued or running job is canceled first (a running one is given `wait_s` to stop at its next step);
2. a tombstone is recorded, so that a file a worker still writes afterwards is removed by the sweeper
   (services/jobs/sweeper.py) and by the worker itself when it finds its job gone (`settle_artifacts`);
3. the model registration and the job record go (from then on, every route answers 404);
4. the files go.
"""

import logging
import time

from services.contracts.jobs import Job, JobStatus, JobType
from services.jobs.artifacts import ArtifactStore
from services.jobs.interface import JobNotFound, JobSystem, TransitionRefused

log = logging.getLogger(__name__)
MODEL_PARTS = ("model", "model.json")


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def delete_job(system: JobSystem, artifacts: ArtifactStore, job: Job, *, wait_s: float = 5.0) -> None:
    """Cancel (if needed) and remove a job, its model if it made one, and all its files."""
    if not job.status.terminal:
        try:
            system.cancel(job.id)
        except (TransitionRefused, JobNotFound):
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if system.get(job.id).status.terminal:
                    break
            except JobNotFound:
                break
            time.sleep(0.1)
    system.mark_deleted(job.id)
    if job.type == JobType.finetune:
        system.unregister_model(job.id)
    try:
        system.delete(job.id)
    except JobNotFound:
        pass
    system.drop_storage(job.id)
    if not artifacts.delete(job_prefix(job.id)):
        log.info("job %s: its worker is still writing; the rest of its files go when it stops", job.id)
    log.info("job %s (%s, %s) deleted with its files", job.id, job.type.value, job.status.value)


def delete_model(system: JobSystem, artifacts: ArtifactStore, model_id: str, owner: str) -> None:
    """Remove a fine-tuned model's weights and registration (JobNotFound when `owner` has no such model).

    While the fine-tune's job record lives, its config and logs stay with it; once the record has expired
    the model was all that kept the files, so they all go.
    """
    system.get_model(model_id, owner)
    system.unregister_model(model_id)
    try:
        system.get(model_id)
        record_alive = True
    except JobNotFound:
        record_alive = False
    if record_alive:
        for part in MODEL_PARTS:
            artifacts.delete(f"{job_prefix(model_id)}/{part}")
        system.record_storage(owner, model_id, artifacts.usage(job_prefix(model_id))[0])
    else:
        system.mark_deleted(model_id)
        system.drop_storage(model_id)
        artifacts.delete(job_prefix(model_id))
    log.info("model %s deleted", model_id)


def settle_artifacts(system: JobSystem, artifacts: ArtifactStore, job_id: str) -> None:
    """After a task ran: count the job's bytes for its owner, or, when the job was deleted meanwhile,
    remove what the task may have written after the deletion."""
    try:
        job = system.get(job_id)
    except JobNotFound:
        if system.is_deleted(job_id):  # it may have registered its model after the deletion: undo that too
            system.unregister_model(job_id)
            system.drop_storage(job_id)
            artifacts.delete(job_prefix(job_id))
        return
    if job.status in (JobStatus.queued, JobStatus.running):
        return  # it runs again (re-delivered); counted when it ends
    system.record_storage(job.owner, job_id, artifacts.usage(job_prefix(job_id))[0])
