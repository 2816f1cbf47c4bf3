"""Training runs on the tiny model: the loss falls, prior preservation limits drift, the VAE stays frozen,
a resumed run continues the uninterrupted loss curve, and both exports load in diffusers."""

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from services.contracts.finetune import FinetuneConfig
from services.dreambooth.data import DreamBoothStream, collate, tokenize
from services.dreambooth.train.callbacks import list_checkpoints
from services.dreambooth.train.module import DreamBoothModule
from services.dreambooth.train.run import RunHooks, train_dreambooth


def make_config(**kw) -> FinetuneConfig:
    base = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "resolution": 64,
            "max_train_steps": 4, "checkpoint_every": 100, "mixed_precision": "32", "center_crop": True}
    base.update(kw)
    return FinetuneConfig(**base).resolved(seed=7)


class LossRecorder(pl.Callback):
    """The loss of the last micro-batch of each optimizer step, by step."""

    def __init__(self):
        self.losses: dict[int, float] = {}
        self._last = -1

    def on_train_start(self, trainer, pl_module):
        self._last = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            self.losses[trainer.global_step] = float(outputs["loss"])


def fixed_batches(module: DreamBoothModule, images, prompt: str, n: int = 6) -> list[dict]:
    """Evaluation batches with fixed noise/timesteps (sample indices far beyond any training run's)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(module.base_model, subfolder="tokenizer")
    stream = DreamBoothStream(images, tokenize(tok, prompt), resolution=64, seed=123, center_crop=True)
    return [collate([stream.example(10_000 + i)]) for i in range(n)]


@torch.no_grad()
def eval_loss(module: DreamBoothModule, batches: list[dict]) -> float:
    module.eval()
    return sum(float(module._common_step(b).loss) for b in batches) / len(batches)


def test_instance_loss_falls(tiny_sd, instance_images, tmp_path):
    cfg = make_config(method="full", with_prior_preservation=False, learning_rate=1e-3, max_train_steps=8)
    before = DreamBoothModule(cfg, tiny_sd)
    batches = fixed_batches(before, instance_images, cfg.instance_prompt)
    loss_before = eval_loss(before, batches)
    result = train_dreambooth(cfg, tiny_sd, instance_images, tmp_path, export=False)
    loss_after = eval_loss(result.module, batches)
    assert loss_after < 0.9 * loss_before, (loss_before, loss_after)


@pytest.fixture(scope="module")
def class_aware_base(tiny_sd, class_images, tmp_path_factory):
    """The tiny model first trained to denoise the class images, so it has a class prior worth keeping (the
    random tiny model has none). Plain PyTorch loop: it only prepares a base model."""
    import shutil

    from transformers import CLIPTokenizer

    module = DreamBoothModule(make_config(method="full", with_prior_preservation=False), tiny_sd)
    tok = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    stream = DreamBoothStream(class_images, tokenize(tok, "a photo of a dog"), resolution=64, seed=9,
                              center_crop=True)
    opt = torch.optim.AdamW(module.unet.parameters(), lr=1e-3)
    for i in range(25):
        module._common_step(collate([stream.example(4 * i + j) for j in range(4)])).loss.backward()
        opt.step()
        opt.zero_grad()
    out = tmp_path_factory.mktemp("class-aware") / "base"
    shutil.copytree(tiny_sd, out)
    module.unet.save_pretrained(out / "unet")
    return out


def test_prior_preservation_limits_drift_on_class_images(class_aware_base, instance_images, class_images,
                                                         tmp_path):
    """Fine-tuning on the subject moves the model's class-prompt predictions on class images away from the
    base model's; with the prior loss on class images they move less. Both are measured."""
    common = {"method": "full", "learning_rate": 3e-4, "max_train_steps": 6}
    base = DreamBoothModule(make_config(**common, with_prior_preservation=False), class_aware_base).eval()
    batches = fixed_batches(base, class_images, "a photo of a dog", n=8)

    @torch.no_grad()
    def drift(module) -> float:
        module.eval()
        return sum(float(_pred(module, b).sub(_pred(base, b)).pow(2).mean()) for b in batches) / len(batches)

    no_prior = train_dreambooth(make_config(**common, with_prior_preservation=False), class_aware_base,
                                instance_images, tmp_path / "no-prior", export=False)
    with_prior = train_dreambooth(make_config(**common, with_prior_preservation=True), class_aware_base,
                                  instance_images, tmp_path / "prior", class_images=class_images, export=False)
    drift_without, drift_with = drift(no_prior.module), drift(with_prior.module)
    print(f"class-prompt prediction drift on class images: without prior {drift_without:.5f}, "
          f"with prior {drift_with:.5f}")
    assert 0 < drift_with < drift_without


def _pred(module: DreamBoothModule, batch: dict) -> torch.Tensor:
    """UNet prediction at a fixed t=500 with fixed noise (depends only on the batch)."""
    g = torch.Generator().manual_seed(int(batch["sample_index"][0]))
    latents = module.vae.encode(batch["pixel_values"]).latent_dist.sample(generator=g)
    latents = latents * module.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=g)
    t = torch.full((latents.shape[0],), 500, dtype=torch.long)
    noisy = module.noise_scheduler.add_noise(latents, noise, t)
    hidden = module.text_encoder(batch["input_ids"], return_dict=False)[0]
    return module.unet(noisy, t, hidden, return_dict=False)[0]


def test_vae_unchanged_and_full_export_loads(tiny_sd, instance_images, class_images, tmp_path):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    cfg = make_config(method="full", train_text_encoder=True, learning_rate=1e-3, max_train_steps=3,
                      gradient_checkpointing=True, prediction_type="v_prediction")
    result = train_dreambooth(cfg, tiny_sd, instance_images, tmp_path, class_images=class_images)
    module = result.module
    assert not module.vae.training and all(not p.requires_grad for p in module.vae.parameters())
    optimized = {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in module.vae.parameters()}
    base_vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae").state_dict()
    for name, tensor in module.vae.state_dict().items():
        assert torch.equal(tensor, base_vae[name]), name
    assert (tmp_path / "model" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tiny_sd / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()

    pipe = StableDiffusionPipeline.from_pretrained(result.model_path, safety_checker=None)
    trained_unet = module.unet.state_dict()
    changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, trained_unet[k])]
    assert not changed
    base_te = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None).text_encoder.state_dict()
    assert any(not torch.equal(v, base_te[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert (result.model_path / "DETBOOTH_RANDOM_TEST_MODEL").exists()
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # trained with an override: saved with it


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_lora_export_is_small_and_loads_with_alpha(tiny_sd, instance_images, class_images, tmp_path,
                                                   train_text_encoder):
    from diffusers import StableDiffusionPipeline

    cfg = make_config(method="lora", lora={"rank": 4, "alpha": 8}, learning_rate=1e-2, max_train_steps=2,
                      train_text_encoder=train_text_encoder)
    result = train_dreambooth(cfg, tiny_sd, instance_images, tmp_path, class_images=class_images)
    path = result.model_path
    assert path.name == "pytorch_lora_weights.safetensors"
    assert path.stat().st_size < 1024 * 1024
    keys = load_file(path).keys()
    assert any(k.startswith("unet.") for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys) == train_text_encoder

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.load_lora_weights(path)
    # the reloaded adapter computes what the trained one did: same scale (alpha / rank = 2), same weights
    module = result.module.eval()
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 49407, (1, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h_trained = module.text_encoder(ids, return_dict=False)[0]
        h_loaded = pipe.text_encoder(ids, return_dict=False)[0]
        torch.testing.assert_close(h_loaded, h_trained, rtol=1e-4, atol=1e-5)
        t = torch.tensor([300])
        torch.testing.assert_close(pipe.unet(x, t, h_trained).sample, module.unet(x, t, h_trained).sample,
                                   rtol=1e-4, atol=1e-5)
        base_unet = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None).unet
        assert not torch.allclose(base_unet(x, t, h_trained).sample, module.unet(x, t, h_trained).sample)


def test_resume_continues_the_same_loss_curve(tiny_sd, instance_images, class_images, tmp_path):
    cfg = make_config(method="lora", learning_rate=1e-2, max_train_steps=5, checkpoint_every=2,
                      keep_last_checkpoints=2, random_flip=True, center_crop=False,
                      gradient_accumulation_steps=2, lr_scheduler="linear", lr_warmup_steps=1, snr_gamma=5.0,
                      offset_noise=0.1)
    straight = LossRecorder()
    train_dreambooth(cfg, tiny_sd, instance_images, tmp_path / "straight", class_images=class_images,
                     hooks=RunHooks(callbacks=[straight]), export=False)

    # first attempt "dies" after step 3: a cancel stops it and keeps its state at step 3
    first = LossRecorder()
    interrupted = train_dreambooth(
        cfg, tiny_sd, instance_images, tmp_path / "resumed", class_images=class_images,
        hooks=RunHooks(callbacks=[first], should_cancel=lambda: first.losses.keys() >= {3}), export=False)
    assert interrupted.canceled and interrupted.global_step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == \
        ["step-000002.ckpt", "step-000003.ckpt"]

    second = LossRecorder()
    resumed = train_dreambooth(cfg, tiny_sd, instance_images, tmp_path / "resumed", class_images=class_images,
                               hooks=RunHooks(callbacks=[second]), export=False)
    assert resumed.resumed_from.name == "step-000003.ckpt"
    assert sorted(second.losses) == [4, 5]
    curve = {**first.losses, **second.losses}
    assert curve.keys() == straight.losses.keys()
    for step, loss in curve.items():
        assert loss == pytest.approx(straight.losses[step], rel=1e-5, abs=1e-6), step
    # the last K checkpoints are kept
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == \
        ["step-000004.ckpt", "step-000005.ckpt"]
