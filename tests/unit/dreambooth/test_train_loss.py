"""The DreamBooth loss as pure functions, checked against hand-written formulas."""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from services.dreambooth.train.loss import dreambooth_loss, min_snr_weights, sample_noise, training_target


def _sched(prediction_type="epsilon"):
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, prediction_type=prediction_type)


def test_prior_loss_is_weighted_mse_of_the_class_half():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    parts = dreambooth_loss(pred, target, with_prior=True, prior_loss_weight=0.5)
    instance, prior = F.mse_loss(pred[:2], target[:2]), F.mse_loss(pred[2:], target[2:])
    torch.testing.assert_close(parts.instance, instance)
    torch.testing.assert_close(parts.prior, prior)
    torch.testing.assert_close(parts.loss, instance + 0.5 * prior)
    no_prior = dreambooth_loss(pred, target, with_prior=False, prior_loss_weight=0.5)
    assert no_prior.prior is None
    torch.testing.assert_close(no_prior.loss, F.mse_loss(pred, target))


def test_v_prediction_target_and_min_snr_weights():
    s = _sched("v_prediction")
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(s, latents, noise, t, "v_prediction"),
                               a.sqrt() * noise - (1 - a).sqrt() * latents)
    assert training_target(s, latents, noise, t, "epsilon") is noise
    snr = (a / (1 - a)).flatten()
    torch.testing.assert_close(min_snr_weights(s, t, 5.0, "epsilon"), torch.clamp(snr, max=5.0) / snr)
    torch.testing.assert_close(min_snr_weights(s, t, 5.0, "v_prediction"), torch.clamp(snr, max=5.0) / (snr + 1))


def test_min_snr_weights_scale_each_instance_example():
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    target[1] *= 2  # per-example mse: 1 and 4
    parts = dreambooth_loss(pred, target, with_prior=False, prior_loss_weight=1.0, snr_weights=torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(parts.loss, torch.tensor((1 * 1.0 + 4 * 0.5) / 2))


def test_offset_noise_adds_a_per_channel_constant():
    latents = torch.zeros(2, 4, 16, 16)
    plain = sample_noise(latents, torch.Generator().manual_seed(1))
    offset = sample_noise(latents, torch.Generator().manual_seed(1), offset_noise=0.1)
    diff = offset - plain
    assert torch.allclose(diff, diff[..., :1, :1].expand_as(diff)) and diff.abs().max() > 0
