"""Fixtures shared by the DreamBooth worker tests."""

from pathlib import Path

import pytest
import redis


@pytest.fixture(scope="session")
def tiny_sd_data_dir(tmp_path_factory) -> Path:
    """A data folder whose `models/tiny-sd` holds the tiny random pipeline (built once per test session)."""
    from services.dreambooth.base_models import resolve_base_model

    data_dir = tmp_path_factory.mktemp("dreambooth-data")
    resolve_base_model("tiny", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_data_dir) -> Path:
    """The tiny random Stable Diffusion pipeline as a diffusers folder (read-only: copy it to change it)."""
    return tiny_sd_data_dir / "models" / "tiny-sd"


# generation: loaded tiny models and fine-tunes made from it --------------------------------------------


@pytest.fixture(scope="session")
def tiny_loaded(tiny_sd):
    """The tiny base model loaded on CPU in float32 (shared: do not modify its weights)."""
    import torch

    from services.dreambooth.model_loading import load_pipeline_folder

    return load_pipeline_folder("base", tiny_sd, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def full_finetune_dir(tiny_sd, tmp_path_factory) -> Path:
    """A 'full' fine-tune export: the tiny pipeline with its UNet weights perturbed."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    out = tmp_path_factory.mktemp("finetunes") / "full"
    shutil.copytree(tiny_sd, out)
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    unet.save_pretrained(out / "unet")
    return out


@pytest.fixture(scope="session")
def lora_file(tiny_sd, tmp_path_factory) -> Path:
    """A LoRA adapter for the tiny UNet with random non-zero weights, saved the way diffusers loads it."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(2)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    out = tmp_path_factory.mktemp("finetunes") / "lora"
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        weight_name="pytorch_lora_weights.safetensors",
    )
    return out / "pytorch_lora_weights.safetensors"


# training: small synthetic instance and class images ---------------------------------------------------


def _pattern_images(n: int, size: int, seed: int, tint: tuple[int, int, int]):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = np.array(tint, dtype=np.float32)[None, None, :]
        noise = rng.normal(0, 25, (size, size + 8, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype("uint8")))
    return out


@pytest.fixture(scope="session")
def instance_images():
    """Three 64x72 reddish 'subject' photos."""
    return _pattern_images(3, 64, seed=0, tint=(200, 40, 40))


@pytest.fixture(scope="session")
def class_images():
    """Four 64x72 bluish 'class' photos."""
    return _pattern_images(4, 64, seed=1, tint=(40, 60, 200))


@pytest.fixture
def job_env(tmp_path, tiny_sd, monkeypatch, redis_server, key_prefix):
    """The worker's task module wired to this test's own Redis (private prefix) and artifact folder."""
    from services.dreambooth import tasks
    from services.jobs.artifacts import ArtifactStore
    from services.jobs.settings import JobSettings
    from services.jobs.redis_system import RedisJobSystem

    settings = JobSettings(data_dir=tmp_path, key_prefix=key_prefix, redis_url=redis_server)
    store = RedisJobSystem(redis.Redis.from_url(redis_server), prefix=key_prefix)
    monkeypatch.setenv("DETBOOTH_SD_BASE_MODEL", str(tiny_sd))
    monkeypatch.setattr(tasks, "settings", settings)
    monkeypatch.setattr(tasks, "_store", store)
    return store, ArtifactStore(settings.artifacts_location), settings
