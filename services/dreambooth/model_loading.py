"""Load a base model, a fully fine-tuned pipeline, or base + LoRA adapter into a `LoadedModel`."""

import logging
from pathlib import Path

import torch

from services.dreambooth.base_models import is_tiny
from services.dreambooth.pipeline_cache import LoadedModel

log = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def folder_bytes(folder: Path) -> int:
    """Size of a pipeline's weight files: an estimate of its memory before loading it."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.suffix in {".safetensors", ".bin"})


def _pipeline(folder: Path, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        str(folder),
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _to_loaded(
    name: str, pipe, device: torch.device, random_weights: bool, compile_unet: bool
) -> LoadedModel:
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    if device.type == "cuda":  # convolutions run faster in NHWC on tensor cores
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    unet = torch.compile(pipe.unet) if compile_unet and device.type == "cuda" else pipe.unet
    return LoadedModel(
        name=name,
        unet=unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler_config=dict(pipe.scheduler.config),
        random_weights=random_weights,
    )


def load_pipeline_folder(
    name: str, folder: Path, device: torch.device, dtype: torch.dtype, compile_unet: bool = False
) -> LoadedModel:
    """A diffusers folder: the base model or a fully fine-tuned export."""
    log.info("loading %s from %s (%s, %s)", name, folder, device, dtype)
    return _to_loaded(name, _pipeline(folder, dtype), device, is_tiny(folder), compile_unet)


def load_lora_model(
    name: str,
    base_folder: Path,
    lora: Path,
    device: torch.device,
    dtype: torch.dtype,
    compile_unet: bool = False,
) -> LoadedModel:
    """The base model with a LoRA adapter fused into its weights (a private copy: the base stays clean)."""
    log.info("loading %s: %s + LoRA %s", name, base_folder, lora)
    pipe = _pipeline(base_folder, dtype)
    if lora.is_dir():
        pipe.load_lora_weights(str(lora), weight_name=LORA_WEIGHT_NAME, adapter_name="finetune")
    else:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="finetune")
    pipe.fuse_lora(adapter_names=["finetune"])  # no per-step adapter overhead
    pipe.unload_lora_weights()  # drops the adapter modules; the fused weights stay
    return _to_loaded(name, pipe, device, is_tiny(base_folder), compile_unet)
