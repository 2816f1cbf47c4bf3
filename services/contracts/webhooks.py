"""Webhooks a job may ask for: the request fields and the events (Standard Webhooks delivery:
services/jobs/webhooks.py)."""

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class WebhookEvent(StrEnum):
    start = "start"
    progress = "progress"
    completed = "completed"


ALL_EVENTS = (WebhookEvent.start, WebhookEvent.progress, WebhookEvent.completed)


class WebhookRequest(BaseModel):
    """`webhook` and `webhook_events` of POST /finetune (form fields) and POST /generate (JSON fields)."""

    model_config = ConfigDict(extra="forbid")

    webhook: str | None = Field(default=None, max_length=2048,
                                description="http(s) URL that receives signed job events (Standard Webhooks)")
    # Literal, not the enum: the OpenAPI gets the choices inline (no $ref to resolve in multipart schemas)
    webhook_events: list[Literal["start", "progress", "completed"]] = Field(
        default_factory=lambda: [e.value for e in ALL_EVENTS],
        description="which events to send: any of start, progress, completed (default: all)")

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):  # a form field: "start,completed"
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("webhook_events")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one of start, progress, completed")
        return list(dict.fromkeys(v))

    def spec(self) -> dict[str, Any] | None:
        """What goes into `job.spec["webhook"]`."""
        if self.webhook is None:
            return None
        return {"url": self.webhook, "events": list(self.webhook_events)}
