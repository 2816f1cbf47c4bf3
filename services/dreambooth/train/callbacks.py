"""Side effects of training, as Lightning callbacks: progress, cancellation, validation images, checkpoints."""

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from services.contracts.finetune import TrainingMetrics

log = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")

# (step, total, eta_s, metrics) -> None
ProgressFn = Callable[[int, int, float | None, dict[str, float]], None]


class ProgressReporter(pl.Callback):
    """After every optimizer step: step, total, loss, eta and it/s to `report` (at most every
    `min_interval_s`, and always at the last step) and it/s to the loggers."""

    def __init__(self, report: ProgressFn, total: int, min_interval_s: float = 0.5):
        self.report = report
        self.total = total
        self.min_interval_s = min_interval_s
        self._start_step = 0
        self._t0 = 0.0
        self._last_step = -1
        self._last_report = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # inside gradient accumulation
            return
        self._last_step = step
        elapsed = time.perf_counter() - self._t0
        done = step - self._start_step
        it_s = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / it_s if it_s > 0 else None
        pl_module.log("train/it_per_s", it_s, on_step=True, on_epoch=False, batch_size=1)
        now = time.perf_counter()
        if step < self.total and now - self._last_report < self.min_interval_s:
            return
        self._last_report = now
        losses = {key.removeprefix("train/"): float(value) for key in ("train/loss", "train/loss_instance",
                  "train/loss_prior") if (value := trainer.callback_metrics.get(key)) is not None}
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups] if trainer.optimizers else []
        metrics = TrainingMetrics(it_per_s=round(it_s, 4), lr=float(lrs[0]) if lrs else None, **losses)
        self.report(step, self.total, eta, metrics.reported())


class CancelWatcher(pl.Callback):
    """Asks `should_cancel()` after every optimizer step; when it says yes, training stops there.

    Only at step boundaries: a checkpoint taken in the middle of gradient accumulation would resume with
    the accumulation counter out of phase."""

    def __init__(self, should_cancel: Callable[[], bool]):
        self.should_cancel = should_cancel
        self.canceled = False
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # inside gradient accumulation
            return
        self._last_step = trainer.global_step
        if not self.canceled and self.should_cancel():
            log.info("cancel requested at step %d: stopping", trainer.global_step)
            self.canceled = True
            trainer.should_stop = True


class ValidationImages(pl.Callback):
    """Every `every` steps (and at the end) samples images for the validation prompts with the model as
    it is, saves them under `out_dir/step-NNNNNN/` and logs them to TensorBoard."""

    def __init__(self, prompts: list[str], every: int, out_dir: Path, *, num_images: int = 1,
                 inference_steps: int = 25, guidance_scale: float = 7.5, resolution: int = 512, seed: int = 0):
        self.prompts = prompts
        self.every = every
        self.out_dir = Path(out_dir)
        self.num_images = num_images
        self.inference_steps = inference_steps
        self.guidance_scale = guidance_scale
        self.resolution = resolution
        self.seed = seed
        self._done: set[int] = set()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every == 0:
            self.sample(trainer, pl_module, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sample(trainer, pl_module, trainer.global_step)

    @torch.no_grad()
    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> list[Path]:
        if step in self._done or not trainer.is_global_zero:
            return []
        self._done.add(step)
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
        from transformers import CLIPTokenizer

        base = pl_module.base_model
        pipe = StableDiffusionPipeline(
            vae=pl_module.vae, text_encoder=pl_module.text_encoder, unet=pl_module.unet,
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
            scheduler=DPMSolverMultistepScheduler.from_pretrained(base, subfolder="scheduler"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        was_training = pl_module.training
        pl_module.eval()
        folder = self.out_dir / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        try:
            for p_idx, prompt in enumerate(self.prompts):
                gen = torch.Generator(device=pl_module.device).manual_seed(self.seed + p_idx)
                with torch.autocast(pl_module.device.type, enabled=False):
                    images = pipe(prompt, num_images_per_prompt=self.num_images, generator=gen,
                                  num_inference_steps=self.inference_steps, guidance_scale=self.guidance_scale,
                                  height=self.resolution, width=self.resolution).images
                for i_idx, im in enumerate(images):
                    path = folder / f"{p_idx:02d}-{i_idx:02d}.png"
                    im.save(path)
                    saved.append(path)
                    _log_image(trainer, f"validation/{p_idx:02d}-{i_idx:02d}", im, step)
        finally:
            pl_module.train(was_training)
        (folder / "prompts.txt").write_text("\n".join(self.prompts) + "\n", encoding="utf-8")
        return saved


def _log_image(trainer: pl.Trainer, tag: str, image, step: int) -> None:
    import numpy as np

    for logger in trainer.loggers:
        add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
        if add_image is not None:
            add_image(tag, np.asarray(image), step, dataformats="HWC")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary name and renames it: a crash never leaves half a checkpoint
    under a name that resume would pick."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


def checkpoint_step(path: Path) -> int | None:
    m = CHECKPOINT_NAME.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in folder.iterdir() if p.is_file()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def newest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and stale temporary files); returns what was deleted."""
    found = list_checkpoints(folder)
    gone = found[:-keep] if keep > 0 else found
    for p in gone:
        p.unlink(missing_ok=True)
    for tmp in folder.glob(".step-*.ckpt.tmp-*") if folder.is_dir() else []:
        tmp.unlink(missing_ok=True)
    return gone


class CheckpointEvery(pl.Callback):
    """Saves the full training state as `step-NNNNNN.ckpt` every `every` optimizer steps and keeps the newest
    `keep` (ModelCheckpoint's top-k bookkeeping forgets files written outside it, e.g. on cancel)."""

    def __init__(self, folder: Path, every: int, keep: int,
                 on_saved: Callable[[Path, list[Path]], None] | None = None):
        self.folder = Path(folder)
        self.every = every
        self.keep = keep
        self.on_saved = on_saved  # (new checkpoint, pruned ones): e.g. mirror them to a remote store
        self._last_saved = -1

    def path_for(self, step: int) -> Path:
        return self.folder / f"step-{step:06d}.ckpt"

    def save(self, trainer: pl.Trainer) -> Path:
        step = trainer.global_step
        path = self.path_for(step)
        if step != self._last_saved:
            trainer.save_checkpoint(path)
            self._last_saved = step
            if trainer.is_global_zero:
                gone = prune_checkpoints(self.folder, self.keep)
                if self.on_saved is not None:
                    self.on_saved(path, gone)
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every == 0 and step != self._last_saved:
            self.save(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_saved = trainer.global_step  # the checkpoint we resumed from already exists
