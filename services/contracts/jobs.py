"""Jobs: the record shared by the gateway and the workers, its statuses and transitions, and the view its
owner gets over the API."""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from services.contracts.finetune import FinetuneResult
from services.contracts.generate import GenerateResult


class JobType(StrEnum):
    finetune = "finetune"
    generate = "generate"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


# The only status changes a job may make. running -> queued is a re-delivery after a worker died.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.canceled}),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.queued}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.canceled: frozenset(),
}


class Phase(StrEnum):
    """What a fine-tune is doing, in this order."""

    preparing = "preparing"  # its config and photos read, the base model found
    class_images = "class_images"  # the prior-preservation class images generated (cached for later jobs)
    training = "training"
    exporting = "exporting"  # the LoRA file or the diffusers folder written


class PhaseProgress(BaseModel):
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    it_per_s: float | None = Field(default=None, description="the phase's own units a second: steps, images")


class Progress(BaseModel):
    """`step`, `total` and `eta_s` are the job's main measure: a fine-tune's training steps, a generation's
    denoising steps. A fine-tune also names its current `phase` and keeps each phase's own numbers in `phases`."""

    step: int = 0
    total: int = 0
    eta_s: float | None = None
    phase: Phase | None = None
    phases: dict[Phase, PhaseProgress] = Field(default_factory=dict)


class JobError(BaseModel):
    code: str
    message: str


def new_job_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(BaseModel):
    id: str
    type: JobType
    owner: str = Field(description="hash of the API key that created the job")
    status: JobStatus = JobStatus.queued
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="the validated input of the job")
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, float] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int = 0
    cancel_requested: bool = False


class FinetuneResultView(FinetuneResult):
    """A succeeded fine-tune's result as its owner sees it: the artifact keys with their download links."""

    model_url: str | None = Field(default=None, description="download link of `model` (the LoRA file or folder)")
    config_url: str | None = Field(default=None, description="download link of the resolved config.yaml")


class GeneratedImageView(BaseModel):
    url: str = Field(description="download link of the PNG")
    seed: int


class GenerateResultView(GenerateResult):
    """A succeeded generation's result as its owner sees it: each image as a download link and its seed."""

    images: list[GeneratedImageView]  # type: ignore[assignment]  # links where the record keeps artifact keys


class JobView(BaseModel):
    """A job as its owner sees it (`GET /jobs/{id}`): no owner, no input keys, artifact keys as URLs."""

    id: str
    type: JobType
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress
    metrics: dict[str, float]
    result: FinetuneResultView | GenerateResultView | None = Field(
        default=None, description="set once the job succeeded: a fine-tune's or a generation's result")
    error: JobError | None = None
    attempts: int
    cancel_requested: bool
    spec: dict[str, Any]


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = None
