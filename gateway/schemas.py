"""The owner's view of a job, built from the job record (artifact keys as download URLs)."""

from typing import Any

from services.contracts.jobs import Job, JobView


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
