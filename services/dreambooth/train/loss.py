"""The DreamBooth objective as pure functions (diffusers' train_dreambooth.py, written out).

    noise ~ N(0, I) (+ offset_noise * N(0, I) per image and channel)
    t ~ U{0, T-1}
    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise
    target = noise (epsilon) or sqrt(a_t) noise - sqrt(1 - a_t) x_0 (v_prediction)
    loss = mse(instance half) + prior_loss_weight * mse(class half)

With `snr_gamma`, the instance term is Min-SNR weighted (Hang et al. 2023): each example's mse is scaled
by min(SNR(t), gamma) / SNR(t) for epsilon, / (SNR(t) + 1) for v-prediction.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    loss: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor | None


def sample_noise(latents: torch.Tensor, generator: torch.Generator, offset_noise: float = 0.0) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if offset_noise > 0:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                             device=latents.device, dtype=latents.dtype)
        noise = noise + offset_noise * offset
    return noise


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device).long()


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def dreambooth_loss(model_pred: torch.Tensor, target: torch.Tensor, *, with_prior: bool,
                    prior_loss_weight: float, snr_weights: torch.Tensor | None = None) -> LossParts:
    """`model_pred`/`target` hold the instance half first and, with prior preservation, the class half.

    `snr_weights` (one per instance example) applies Min-SNR weighting to the instance term.
    """
    model_pred, target = model_pred.float(), target.float()
    prior = None
    if with_prior:
        model_pred, pred_prior = model_pred.chunk(2)
        target, target_prior = target.chunk(2)
        prior = F.mse_loss(pred_prior, target_prior, reduction="mean")
    if snr_weights is None:
        instance = F.mse_loss(model_pred, target, reduction="mean")
    else:
        per_example = F.mse_loss(model_pred, target, reduction="none").mean(dim=list(range(1, model_pred.ndim)))
        instance = (per_example * snr_weights.to(per_example)).mean()
    loss = instance if prior is None else instance + prior_loss_weight * prior
    return LossParts(loss=loss, instance=instance, prior=prior)
