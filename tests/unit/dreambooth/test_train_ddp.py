"""DDP through the training CLI: two CPU processes (gloo), as Lightning launches them on several GPUs."""

import subprocess
import sys

import pytest

from services.contracts.finetune import FinetuneConfig


@pytest.mark.slow
def test_cli_trains_with_ddp_on_two_cpu_processes(tiny_sd, instance_images, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, im in enumerate(instance_images):
        im.save(images / f"{i}.png")
    cfg = FinetuneConfig(instance_prompt="a photo of sks dog", with_prior_preservation=False, resolution=64,
                         max_train_steps=3, checkpoint_every=2, mixed_precision="32", method="lora", seed=1)
    (tmp_path / "cfg.yaml").write_text(cfg.to_yaml())
    work = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "services.dreambooth.train", "--config", str(tmp_path / "cfg.yaml"),
         "--images", str(images), "--workdir", str(work), "--base-model", str(tiny_sd),
         "--data-dir", str(tmp_path / "data"), "--devices", "2", "--accelerator", "cpu"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "world_size: 2" in out.stderr or "distributed_backend=gloo" in out.stderr, out.stderr[-3000:]
    assert (work / "model" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["step-000002.ckpt", "step-000003.ckpt"]
