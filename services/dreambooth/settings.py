"""Settings of the DreamBooth worker (environment variables prefixed `DETBOOTH_`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DreamboothSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETBOOTH_", extra="ignore")

    sd_base_model: str = Field(
        default="tiny",
        description="base Stable Diffusion model: a diffusers folder, a single .safetensors checkpoint, "
        "a hub id (org/name, downloaded only when online), or 'tiny' (random weights, for tests and "
        "offline demos)",
    )
    sd_single_file_config: str | None = Field(
        default=None,
        description="diffusers folder (or hub id, online) whose configs describe a single-file checkpoint's "
        "architecture; needed to convert a .safetensors checkpoint offline",
    )
    pipeline_cache_gb: float = Field(
        default=12.0,
        gt=0,
        description="memory budget of the loaded-pipeline cache (least recently used out first)",
    )
    class_images_cache_gb: float = Field(
        default=20.0, gt=0,
        description="disk budget of the class-image cache (<data_dir>/class_images); least recently used out first",
    )
    device: str | None = Field(
        default=None, description="torch device; default cuda when available, else cpu"
    )
    dtype: str = Field(
        default="auto",
        pattern="^(auto|float32|float16|bfloat16)$",
        description="weights dtype for generation; auto = float16 on CUDA, float32 on CPU",
    )
    gen_batch_same_shape: bool = Field(
        default=True,
        description="run queued generate jobs with the same model, size, steps, scheduler and guidance "
        "in one pipeline call (measured faster, see bench/gen_bench.py)",
    )
    gen_compile: bool = Field(
        default=False,
        description="torch.compile the UNet on CUDA (one compile per image shape; bench/gpu_gen_check.py)",
    )
    gen_max_batch_images: int = Field(default=8, ge=1, le=64, description="images per batched pipeline call")
