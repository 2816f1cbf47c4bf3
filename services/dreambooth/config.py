"""PLACEHOLDER until the training branch lands: the fine-tune config the gateway validates."""

from pydantic import BaseModel, ConfigDict, Field


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    instance_prompt: str = Field(min_length=1)
    class_prompt: str = Field(min_length=1)
    base_model: str | None = None
    resolution: int = Field(default=512, ge=64, le=1024)
