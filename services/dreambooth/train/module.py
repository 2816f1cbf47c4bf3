"""The DreamBooth LightningModule over diffusers components.

VAE frozen (eval mode, no gradients, never in the optimizer); UNet trained (all weights, or a LoRA
adapter); text encoder trained when `train_text_encoder`. Noise, timesteps and the VAE's latent sample are
drawn from a generator seeded by (seed, sample index), so a resumed run repeats an uninterrupted one.
Checkpoints hold only the trained weights (plus Lightning's optimizer, scheduler and loop state).
"""

import hashlib
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from services.contracts.finetune import FinetuneConfig
from services.dreambooth.train.loss import (
    LossParts,
    dreambooth_loss,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    training_target,
)

log = logging.getLogger(__name__)


def step_seed(seed: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:noise:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class DreamBoothModule(pl.LightningModule):
    def __init__(self, config: FinetuneConfig, base_model: Path):
        super().__init__()
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel

        if config.seed is None or config.learning_rate is None:
            raise ValueError("DreamBoothModule needs a resolved config (FinetuneConfig.resolved())")
        self.config = config
        self.base_model = Path(base_model)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base_model, subfolder="scheduler")
        if config.prediction_type is not None:
            self.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae")
        self.text_encoder = CLIPTextModel.from_pretrained(base_model, subfolder="text_encoder")
        self.unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet")
        self.vae.requires_grad_(False)
        self._setup_trainable()
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        self.strict_loading = False  # checkpoints hold only the trained weights
        self.train()

    def _setup_trainable(self) -> None:
        cfg = self.config
        if cfg.method == "full":
            self.unet.requires_grad_(True)
            self.text_encoder.requires_grad_(cfg.train_text_encoder)
            return
        from peft import LoraConfig

        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(
            r=cfg.lora.rank, lora_alpha=cfg.lora.scale_alpha, lora_dropout=cfg.lora.dropout,
            init_lora_weights="gaussian", target_modules=cfg.lora.unet_target_modules,
        ))
        if cfg.train_text_encoder:
            from peft import inject_adapter_in_model

            # peft directly: transformers' own `add_adapter` wants a newer peft than diffusers needs
            self.text_encoder_lora_config = LoraConfig(
                r=cfg.lora.rank, lora_alpha=cfg.lora.scale_alpha, lora_dropout=cfg.lora.dropout,
                init_lora_weights="gaussian", target_modules=cfg.lora.text_encoder_target_modules,
            )
            inject_adapter_in_model(self.text_encoder_lora_config, self.text_encoder, adapter_name="default")
            for name, p in self.text_encoder.named_parameters():
                p.requires_grad_("lora_" in name)

    def train(self, mode: bool = True) -> "DreamBoothModule":
        super().train(mode)
        self.vae.eval()  # frozen parts stay in eval mode whatever Lightning asks
        if not self.config.train_text_encoder:
            self.text_encoder.eval()
        return self

    # the step -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self._common_step(batch)
        self._log_parts(parts, batch_size=batch["sample_index"].shape[0])
        return parts.loss

    def _common_step(self, batch: dict[str, torch.Tensor]) -> LossParts:
        cfg = self.config
        pixels, input_ids = batch["pixel_values"], batch["input_ids"]
        g = torch.Generator(device=pixels.device).manual_seed(step_seed(cfg.seed, int(batch["sample_index"][0])))
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample(generator=g)
            latents = latents * self.vae.config.scaling_factor
        noise = sample_noise(latents, g, cfg.offset_noise)
        timesteps = sample_timesteps(latents.shape[0], self.noise_scheduler.config.num_train_timesteps, g,
                                     latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = self.text_encoder(input_ids, return_dict=False)[0]
        model_pred = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
        target = training_target(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)
        with_prior = bool(batch["with_prior"])
        snr_weights = None
        if cfg.snr_gamma is not None:
            n_instance = latents.shape[0] // 2 if with_prior else latents.shape[0]
            snr_weights = min_snr_weights(self.noise_scheduler, timesteps[:n_instance], cfg.snr_gamma,
                                          self.prediction_type)
        return dreambooth_loss(model_pred, target, with_prior=with_prior, prior_loss_weight=cfg.prior_loss_weight,
                               snr_weights=snr_weights)

    def _log_parts(self, parts: LossParts, batch_size: int) -> None:
        self.log("train/loss", parts.loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/loss_instance", parts.instance.detach(), batch_size=batch_size)
        if parts.prior is not None:
            self.log("train/loss_prior", parts.prior.detach(), batch_size=batch_size)

    # optimisation -------------------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        groups = {"unet": [p for p in self.unet.parameters() if p.requires_grad]}
        if self.config.train_text_encoder:
            groups["text_encoder"] = [p for p in self.text_encoder.parameters() if p.requires_grad]
        return groups

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        cfg = self.config
        scale = 1.0
        if cfg.scale_lr:
            scale = cfg.train_batch_size * cfg.gradient_accumulation_steps * self.trainer.world_size
        groups = self.trainable_parameters()
        param_groups = [{"params": groups["unet"], "lr": cfg.learning_rate * scale, "name": "unet"}]
        if "text_encoder" in groups:
            param_groups.append({"params": groups["text_encoder"],
                                 "lr": cfg.text_encoder_learning_rate * scale, "name": "text_encoder"})
        optimizer = optimizer_class(cfg.use_8bit_adam)(
            param_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        # Lightning steps the scheduler once per optimizer step, so warmup is counted in optimizer steps
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                  num_training_steps=cfg.max_train_steps, num_cycles=cfg.lr_num_cycles,
                                  power=cfg.lr_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # checkpoints: only the trained weights ------------------------------------------------------------
    def _trained_keys(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trained_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["detbooth"] = {"method": self.config.method, "train_text_encoder": self.config.train_text_encoder}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, wanted = set(checkpoint["state_dict"]), self._trained_keys()
        if saved != wanted:
            raise RuntimeError(
                f"checkpoint does not match this model's trained weights ({len(saved - wanted)} unexpected, "
                f"{len(wanted - saved)} missing keys): was the config changed?"
            )


def optimizer_class(use_8bit_adam: bool):
    if not use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise RuntimeError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes (CUDA only)") from None
    return bnb.optim.AdamW8bit
