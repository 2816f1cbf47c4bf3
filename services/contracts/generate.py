"""Generation: the parameters of a request and the result of its job. Imports only pydantic, so the gateway
can validate up front (422) and the client can read results."""

from enum import StrEnum
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_SEED = 2**32 - 1


class SchedulerName(StrEnum):
    ddim = "ddim"
    dpmsolver_pp = "dpmsolver++"
    euler = "euler"
    euler_a = "euler_a"
    pndm = "pndm"


class GenerationLimits(BaseSettings):
    """Size limits shared by the gateway (validation) and the worker (`DETBOOTH_GEN_MAX_SIDE`, ...)."""

    model_config = SettingsConfigDict(env_prefix="DETBOOTH_GEN_", extra="ignore")

    min_side: int = Field(default=64, ge=8, description="smallest width/height in pixels")
    max_side: int = Field(default=1024, ge=64, description="largest width/height in pixels")
    max_pixels: int = Field(default=1024 * 1024, ge=64 * 64, description="largest width × height")


@lru_cache(maxsize=1)
def generation_limits() -> GenerationLimits:
    return GenerationLimits()


class GenerateParams(BaseModel):
    """What `POST /generate` accepts; stored as `job.spec["params"]`."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        max_length=2000,
        description="what to draw; use the identifier a fine-tune learned, e.g. 'a photo of sks dog'",
    )
    negative_prompt: str = Field(default="", max_length=2000, description="what to steer away from")
    guidance_scale: float = Field(
        default=7.5, ge=0, le=30, description="classifier-free guidance; ≤ 1 runs the conditional branch only"
    )
    num_inference_steps: int = Field(default=30, ge=1, le=150)
    width: int = Field(default=512, description="pixels, a multiple of 8")
    height: int = Field(default=512, description="pixels, a multiple of 8")
    num_images: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="image i uses seed + i; default: random (each image's seed is returned)",
    )
    scheduler: SchedulerName = SchedulerName.dpmsolver_pp
    model: str = Field(
        default="base",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="'base' or the id of a succeeded fine-tune job",
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be blank")
        return v

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int) -> int:
        lim = generation_limits()
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v})")
        if not lim.min_side <= v <= lim.max_side:
            raise ValueError(f"must be between {lim.min_side} and {lim.max_side} pixels (got {v})")
        return v

    @model_validator(mode="after")
    def _area(self) -> "GenerateParams":
        lim = generation_limits()
        if self.width * self.height > lim.max_pixels:
            raise ValueError(f"width × height = {self.width * self.height} exceeds {lim.max_pixels} pixels")
        return self

    def image_seeds(self, base_seed: int) -> list[int]:
        """Image i uses base_seed + i (wrapping at 2**32), so any one image can be redone alone."""
        return [(base_seed + i) % (MAX_SEED + 1) for i in range(self.num_images)]


class GeneratedImage(BaseModel):
    key: str = Field(description="artifact key of the PNG (the gateway answers with its `url`)")
    seed: int


class GenerateResult(BaseModel):
    """`job.result` of a succeeded generation."""

    images: list[GeneratedImage]
    model: str
    params: dict[str, Any] = Field(description="the request's parameters as run")
    timings: dict[str, float] = Field(default_factory=dict)
    batch_images: int = Field(description="images sampled in the same pipeline call (batched jobs included)")
    warning: str | None = None
