"""PLACEHOLDER until the generation branch lands: generation parameters the gateway validates."""

from pydantic import BaseModel, ConfigDict, Field


class GenerateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    guidance_scale: float = Field(default=7.5, ge=0, le=30)
    num_inference_steps: int = Field(default=30, ge=1, le=150)
    width: int = Field(default=512, ge=64, le=1024, multiple_of=8)
    height: int = Field(default=512, ge=64, le=1024, multiple_of=8)
    num_images: int = Field(default=1, ge=1, le=8)
    seed: int | None = None
    model: str = "base"
