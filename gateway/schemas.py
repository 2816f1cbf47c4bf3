"""Typed request and response bodies of the public API."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.jobs.schema import Job, JobError, JobStatus, JobType, Progress
from services.jobs.webhooks import WebhookRequest


class LimitType(StrEnum):
    min = "min"
    max = "max"
    resize_long = "resize_long"


class BoxType(StrEnum):
    quad = "quad"
    poly = "poly"


class DetectParams(BaseModel):
    """Per-request overrides of the detector's settings (PaddleOCR's names and meanings)."""

    model_config = ConfigDict(extra="forbid")

    thresh: float | None = Field(default=None, ge=0, le=1, description="binarisation threshold of the map")
    box_thresh: float | None = Field(default=None, ge=0, le=1, description="minimum mean score of a box")
    unclip_ratio: float | None = Field(default=None, gt=0, le=10, description="how far boxes are grown")
    limit_side_len: int | None = Field(default=None, ge=32, le=4096, description="resize target side")
    limit_type: LimitType | None = None
    box_type: BoxType | None = None
    pages: str | None = Field(default=None, max_length=200, description="pages of each PDF/TIFF, e.g. 1-3,5")
    dpi: int | None = Field(default=None, ge=18, le=1200, description="PDF render resolution (default 144)")
    previews: bool | None = Field(default=None, description="return PDF/TIFF pages as JPEG data URLs")


class DetectJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="base64 images (a data: URL prefix is allowed)")
    params: DetectParams = Field(default_factory=DetectParams)


class DetectBox(BaseModel):
    points: list[list[float]]
    score: float


class DetectResult(BaseModel):
    source: int = 0
    page: int | None = None
    preview: str | None = None
    width: int
    height: int
    boxes: list[DetectBox]
    timing_ms: dict[str, float] | None = None


class DetectResponse(BaseModel):
    model: str
    precision: str = Field("fp32", description="the precision the detection engine served at (fp32, bf16, fp16, "
                                               "int8); reduced ones passed the precision guard")
    results: list[DetectResult]


class FinetuneJSON(WebhookRequest):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(description="3–20 base64 images of the subject")
    config: dict[str, Any] = Field(description="fine-tune config: instance_prompt, class_prompt, hyper-parameters")


class JobView(BaseModel):
    """A job as its owner sees it."""

    id: str
    type: JobType
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress
    metrics: dict[str, float]
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int
    cancel_requested: bool
    spec: dict[str, Any]


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = None


class ModelView(BaseModel):
    id: str
    kind: str = Field(description="`base` or `finetune`")
    base_model: str | None = None
    method: str | None = None
    instance_prompt: str | None = None
    created_at: datetime | None = None


class ModelList(BaseModel):
    models: list[ModelView]


def _with_urls(value: Any, base_url: str) -> Any:
    """Replace every artifact `key` in a result with a download `url`."""
    if isinstance(value, dict):
        out = {k: _with_urls(v, base_url) for k, v in value.items() if k != "key"}
        if isinstance(value.get("key"), str):
            out["url"] = f"{base_url}artifacts/{value['key']}"
        return out
    if isinstance(value, list):
        return [_with_urls(v, base_url) for v in value]
    return value


def job_view(job: Job, base_url: str) -> JobView:
    data = job.model_dump(exclude={"owner"})
    result = _with_urls(job.result, base_url) if job.result is not None else None
    if result is not None:  # a fine-tune's artifact keys (model file or folder, config) as download links
        for name in ("model", "config"):
            if isinstance(result.get(name), str) and result[name].startswith("jobs/"):
                result[f"{name}_url"] = f"{base_url}artifacts/{result[name]}"
    data["result"] = result
    data["spec"] = {k: v for k, v in job.spec.items() if k != "inputs"}
    return JobView.model_validate(data)
