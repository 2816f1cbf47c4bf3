"""A small typed client of DetBooth's public REST API (the gateway), on httpx."""

import json
import mimetypes
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.contracts.account import WhoAmI
from services.contracts.catalog import ModelList, ModelView
from services.contracts.detect import DetectionModel, DetectResponse
from services.contracts.jobs import JobList, JobStatus, JobView

TERMINAL = frozenset(s for s in JobStatus if s.terminal)


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: `status`, `progress`, `cancel_requested`, ..."""

    id: str
    event: str
    data: dict[str, Any]


class ApiError(Exception):
    """An error answer of the gateway (RFC 9457 problem details), or no answer at all (status 0)."""

    def __init__(self, status: int, title: str, detail: str = ""):
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status, self.title, self.detail = status, title, detail

    def __str__(self) -> str:
        if self.status == 0:
            return f"{self.title}: {self.detail}"
        return (
            f"{self.title} ({self.status}): {self.detail}" if self.detail else f"{self.title} ({self.status})"
        )


def _raise_for_problem(r: httpx.Response) -> None:
    if r.is_success:
        return
    try:
        body = r.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    title = body.get("title") or r.reason_phrase or "HTTP error"
    detail = body.get("detail") or ("" if body else r.text[:200].strip())
    retry = r.headers.get("retry-after")
    if retry and r.status_code in (429, 503):
        detail = f"{detail} (retry after {retry} s)".strip()
    raise ApiError(r.status_code, title, detail)


def _image_part(item: str | Path | bytes, i: int) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(item, bytes):
        return "images", (f"image{i}", item, "application/octet-stream")
    path = Path(item)
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return "images", (path.name, path.read_bytes(), ctype)


class DetBoothClient:
    """`DetBoothClient("http://127.0.0.1:8000", api_key)`; every method raises `ApiError` on failure."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "DetBoothClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TimeoutException as e:
            raise ApiError(0, "Timed out", f"{self.base_url} did not answer in time") from e
        except httpx.TransportError as e:
            raise ApiError(0, "Cannot reach the gateway", f"{self.base_url}: {e or type(e).__name__}") from e
        _raise_for_problem(r)
        return r

    # detection
    def detect(self, images: Sequence[str | Path | bytes], **params: Any) -> DetectResponse:
        """Text boxes of each image, and of each page of a PDF or TIFF (one result each, with `source` and `page`).
        `params`: thresh, box_thresh, unclip_ratio, limit_side_len, box_type, pages, dpi, previews, model."""
        files = [_image_part(item, i) for i, item in enumerate(images)]
        data = {k: str(v) for k, v in params.items() if v is not None}
        r = self._request("POST", "/detect", files=files, data=data)
        return DetectResponse.model_validate(r.json())

    # jobs
    def finetune(
        self,
        images: Sequence[str | Path | bytes],
        config: dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> JobView:
        files = [_image_part(item, i) for i, item in enumerate(images)]
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = self._request("POST", "/finetune", files=files, data={"config": json.dumps(config)}, headers=headers)
        return JobView.model_validate(r.json())

    def generate(
        self, prompt: str, *, wait_s: float | None = None, idempotency_key: str | None = None, **params: Any
    ) -> JobView:
        """Queue a generation; with `wait_s` the gateway holds the answer until the job ends or time is up."""
        body = {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}
        headers = {}
        if wait_s is not None:
            headers["Prefer"] = f"wait={wait_s:g}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        timeout = None if wait_s is None else wait_s + 30
        kw = {"timeout": timeout} if timeout else {}
        r = self._request("POST", "/generate", json=body, headers=headers, **kw)
        return JobView.model_validate(r.json())

    def job(self, job_id: str) -> JobView:
        return JobView.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def jobs(self, *, limit: int = 20, cursor: str | None = None, type: str | None = None) -> JobList:
        """A page of your jobs, newest first; its `next_cursor` asks for the next page."""
        params = {
            "limit": limit,
            **({"cursor": cursor} if cursor else {}),
            **({"type": type} if type else {}),
        }
        return JobList.model_validate(self._request("GET", "/jobs", params=params).json())

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def delete_job(self, job_id: str) -> None:
        """Delete a job with all its files (a queued or running job is canceled first)."""
        self._request("DELETE", f"/jobs/{job_id}")

    def delete_model(self, model_id: str) -> None:
        """Delete a fine-tuned model's weights."""
        self._request("DELETE", f"/models/{model_id}")

    def whoami(self) -> WhoAmI:
        """The caller's owner id, limits and storage use."""
        return WhoAmI.model_validate(self._request("GET", "/whoami").json())

    def events(self, job_id: str, *, after: str | None = None, reconnects: int = 5) -> Iterator[Event]:
        """The job's events until it ends; a dropped stream is resumed from the last event id."""
        last, tries = after, 0
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with self._http.stream(
                    "GET",
                    f"/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(60.0, connect=10.0),
                ) as r:
                    if not r.is_success:
                        r.read()
                        _raise_for_problem(r)
                    for event in _parse_sse(r.iter_lines()):
                        last, tries = event.id, 0
                        yield event
                        if event.event == "status" and event.data.get("status") in TERMINAL:
                            return
                return  # the server closed the stream: the job has ended
            except (httpx.TransportError, httpx.TimeoutException) as e:
                tries += 1
                if tries > reconnects:
                    raise ApiError(0, "Event stream lost", f"{self.base_url}: {e or type(e).__name__}") from e
                time.sleep(min(2.0, 0.2 * tries))

    def wait(self, job_id: str, *, timeout_s: float = 3600, poll_s: float = 1.0) -> JobView:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job.status.terminal or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    # models and artifacts
    def catalog(self) -> ModelList:
        """Every model at once: the generation models, and the detection models (None when unreachable)."""
        return ModelList.model_validate(self._request("GET", "/models").json())

    def models(self) -> list[ModelView]:
        """The generation models: the base model and your fine-tunes."""
        return self.catalog().models

    def detection_models(self) -> list[DetectionModel]:
        """The detection models the deployment loads (`id`, `precision`, `default`, ...); `detect(model=...)`."""
        detection = self.catalog().detection
        return detection.models if detection else []

    def download(self, url: str, dest: str | Path) -> Path:
        """Save an artifact (its `url` from a job result, or a path under /artifacts/) to `dest`."""
        dest = Path(dest)
        with self._http.stream("GET", url) as r:
            if not r.is_success:
                r.read()
                _raise_for_problem(r)
            with open(dest, "wb") as f:
                for block in r.iter_bytes():
                    f.write(block)
        return dest


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events of a text/event-stream (https://html.spec.whatwg.org/#event-stream-interpretation)."""
    event_id, name, data = "", "message", []
    for line in lines:
        if line == "":
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except json.JSONDecodeError:
                    payload = {"text": "\n".join(data)}
                yield Event(event_id, name, payload if isinstance(payload, dict) else {"value": payload})
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)
