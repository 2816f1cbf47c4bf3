"""What the model trains towards, read from the training step itself (not from the exported config)."""

import pytest
import torch

from services.contracts.finetune import FinetuneConfig
from services.dreambooth.data import DreamBoothStream, collate, tokenize
from services.dreambooth.train import module as module_mod
from services.dreambooth.train.callbacks import list_checkpoints, newest_checkpoint
from services.dreambooth.train.module import DreamBoothModule


def _step_target(tiny_sd, instance_images, monkeypatch, **kw):
    """(target, latents, noise, timesteps, scheduler) of one training step of a module built with `kw`."""
    from transformers import CLIPTokenizer

    cfg = FinetuneConfig(instance_prompt="a photo of sks dog", with_prior_preservation=False, resolution=64,
                         mixed_precision="32", center_crop=True, **kw).resolved(seed=3)
    module = DreamBoothModule(cfg, tiny_sd)
    tok = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    batch = collate([DreamBoothStream(instance_images, tokenize(tok, cfg.instance_prompt), resolution=64, seed=1,
                                      center_crop=True).example(0)])
    seen: dict = {}
    add_noise = module.noise_scheduler.add_noise

    def recording_add_noise(latents, noise, timesteps):
        seen.update(latents=latents, noise=noise, timesteps=timesteps)
        return add_noise(latents, noise, timesteps)

    real_loss = module_mod.dreambooth_loss

    def recording_loss(model_pred, target, **loss_kw):
        seen["target"] = target
        return real_loss(model_pred, target, **loss_kw)

    monkeypatch.setattr(module.noise_scheduler, "add_noise", recording_add_noise)
    monkeypatch.setattr(module_mod, "dreambooth_loss", recording_loss)
    with torch.no_grad():
        module._common_step(batch)
    return seen, module


def test_v_prediction_trains_towards_the_velocity(tiny_sd, instance_images, monkeypatch):
    seen, module = _step_target(tiny_sd, instance_images, monkeypatch, prediction_type="v_prediction")
    assert module.prediction_type == "v_prediction"
    velocity = module.noise_scheduler.get_velocity(seen["latents"], seen["noise"], seen["timesteps"])
    torch.testing.assert_close(seen["target"], velocity)
    assert not torch.allclose(seen["target"], seen["noise"])  # not the epsilon target


def test_epsilon_trains_towards_the_noise(tiny_sd, instance_images, monkeypatch):
    seen, module = _step_target(tiny_sd, instance_images, monkeypatch, prediction_type="epsilon")
    assert module.prediction_type == "epsilon"
    torch.testing.assert_close(seen["target"], seen["noise"])


@pytest.mark.parametrize("names", [["step-000002.ckpt", "step-000010.ckpt", "step-000003.ckpt"],
                                   ["step-9.ckpt", "step-10.ckpt", "step-2.ckpt"]])
def test_newest_checkpoint_is_the_highest_step_not_the_first_or_the_last_name(tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".step-000011.ckpt.tmp-1").write_bytes(b"partial")  # an unfinished save is never resumed from
    steps = sorted(int(n.split("-")[1].split(".")[0]) for n in names)
    assert [p.name for p in list_checkpoints(tmp_path)] == sorted(names, key=lambda n: int(n[5:].split(".")[0]))
    assert newest_checkpoint(tmp_path).name == next(n for n in names if int(n[5:].split(".")[0]) == steps[-1])
