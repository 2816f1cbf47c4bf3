"""The owner's view of a job, built from the job record (artifact keys as download URLs)."""

import logging

from pydantic import ValidationError

from services.contracts.finetune import FinetuneResult
from services.contracts.generate import GenerateResult
from services.contracts.jobs import (
    FinetuneResultView,
    GeneratedImageView,
    GenerateResultView,
    Job,
    JobType,
    JobView,
)

log = logging.getLogger(__name__)


def result_view(job: Job, base_url: str) -> FinetuneResultView | GenerateResultView | None:
    """The job's typed result with a download link for each artifact key."""
    if job.result is None:
        return None

    def link(key: str) -> str | None:  # every artifact a job writes lies under jobs/<id>/
        return f"{base_url}artifacts/{key}" if key.startswith("jobs/") else None

    try:
        if job.type == JobType.finetune:
            tuned = FinetuneResult.model_validate(job.result)
            return FinetuneResultView(**tuned.model_dump(), model_url=link(tuned.model),
                                      config_url=link(tuned.config))
        made = GenerateResult.model_validate(job.result)
    except ValidationError as e:  # a record this version cannot read: the job is still shown, and listed
        log.error("job %s: its %s result does not match the contract: %s", job.id, job.type, e)
        return None
    return GenerateResultView(**made.model_dump(exclude={"images"}),
                              images=[GeneratedImageView(url=f"{base_url}artifacts/{image.key}", seed=image.seed)
                                      for image in made.images])


def job_view(job: Job, base_url: str) -> JobView:
    data = job.model_dump(exclude={"owner", "result"})
    data["spec"] = {k: v for k, v in job.spec.items() if k != "inputs"}
    return JobView(**data, result=result_view(job, base_url))
