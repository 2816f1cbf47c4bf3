"""Text-to-image sampling with classifier-free guidance, over the components of a `LoadedModel`.

The loop is diffusers' StableDiffusionPipeline's, written out so the worker owns batching, per-image seeds,
progress and cancellation; tests check that its images equal the diffusers pipeline's bit for bit.
"""

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from services.contracts.generate import SchedulerName
from services.dreambooth.pipeline_cache import LoadedModel
from services.dreambooth.schedulers import make_scheduler

StepCallback = Callable[[int, int], None]  # (steps done, total steps); may raise to stop


def uses_guidance(guidance_scale: float) -> bool:
    """Guidance ≤ 1 needs no unconditional branch: uncond + 1·(cond − uncond) = cond."""
    return guidance_scale > 1.0


@torch.inference_mode()
def encode_prompts(model: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP hidden states per prompt (77 tokens, longer ones truncated), encoding each distinct text once."""
    unique = list(dict.fromkeys(prompts))
    tokens = model.tokenizer(
        unique,
        padding="max_length",
        max_length=model.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = (
        tokens.attention_mask.to(model.device)
        if getattr(model.text_encoder.config, "use_attention_mask", False)
        else None
    )
    embeds = [
        model.text_encoder(
            tokens.input_ids[i : i + 1].to(model.device),
            attention_mask=mask[i : i + 1] if mask is not None else None,
        )[0]
        for i in range(len(unique))
    ]
    by_text = dict(zip(unique, embeds))
    return torch.cat([by_text[p] for p in prompts]).to(model.dtype)


def _step_kwargs(scheduler, generators: list[torch.Generator]) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs


@torch.inference_mode()
def sample(
    model: LoadedModel,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    guidance_scale: float,
    num_inference_steps: int,
    width: int,
    height: int,
    scheduler: SchedulerName | str,
    on_step: StepCallback | None = None,
) -> list[Image.Image]:
    """One image per (prompt, negative prompt, seed), in one batch of shared size, steps and guidance."""
    if not len(prompts) == len(negative_prompts) == len(seeds):
        raise ValueError("prompts, negative_prompts and seeds must have the same length")
    device, dtype = model.device, model.dtype
    sched = make_scheduler(scheduler, model.scheduler_config)
    guided = uses_guidance(guidance_scale)

    cond = encode_prompts(model, prompts)
    # CFG as one forward pass: the unconditional half comes first, as in diffusers
    embeds = torch.cat([encode_prompts(model, negative_prompts), cond]) if guided else cond

    # before the noise: some schedulers (Euler) derive init_noise_sigma from the chosen timesteps
    sched.set_timesteps(num_inference_steps, device=device)
    # each image's starting noise comes from its own CPU generator: the same seed gives the same image on any
    # device and in any batch
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    vae_scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    shape = (len(seeds), model.unet.config.in_channels, height // vae_scale, width // vae_scale)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype) * sched.init_noise_sigma

    step_kwargs = _step_kwargs(sched, generators)
    timesteps = sched.timesteps
    for i, t in enumerate(timesteps):
        x = torch.cat([latents] * 2) if guided else latents
        x = sched.scale_model_input(x, t)
        noise = model.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if guided:
            uncond, text = noise.chunk(2)
            noise = uncond + guidance_scale * (text - uncond)
        latents = sched.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return decode(model, latents, generators)


def decode(model: LoadedModel, latents: torch.Tensor, generators: list[torch.Generator]) -> list[Image.Image]:
    images = model.vae.decode(
        latents / model.vae.config.scaling_factor, return_dict=False, generator=generators
    )[0]
    images = (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray(a) for a in (images * 255).round().astype(np.uint8)]
