"""Response bodies only the gateway speaks (the model catalogue), and the owner's view of a job."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from services.contracts.detect import DetectionModelList
from services.contracts.jobs import Job, JobView


class ModelView(BaseModel):
    id: str
    kind: str = Field(description="`base` or `finetune`")
    base_model: str | None = None
    method: str | None = None
    instance_prompt: str | None = None
    created_at: datetime | None = None


class ModelList(BaseModel):
    models: list[ModelView] = Field(description="generation: the base model and the caller's fine-tunes")
    detection: DetectionModelList | None = Field(
        default=None, description="the detection models this deployment loads, with the precision each serves at "
                                  "(null when the detection service did not answer)")


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
