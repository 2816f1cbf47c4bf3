"""One DreamBooth training run: build the module, data and Trainer, resume from the newest checkpoint in
`workdir/checkpoints`, fit, and export. Knows nothing of jobs, Redis or Celery (see `train/job.py`)."""

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image

from services.contracts.finetune import FinetuneConfig
from services.dreambooth.data import DreamBoothStream, collate, tokenize
from services.dreambooth.train.callbacks import (
    AtomicCheckpointIO,
    CancelWatcher,
    CheckpointEvery,
    ProgressFn,
    ProgressReporter,
    ValidationImages,
    checkpoint_step,
    newest_checkpoint,
)
from services.dreambooth.train.export import export_model
from services.dreambooth.train.module import DreamBoothModule

log = logging.getLogger(__name__)

# the frozen VAE (and text encoder) stay in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)


@dataclass
class TrainResult:
    global_step: int
    canceled: bool
    metrics: dict[str, float]
    resumed_from: Path | None
    checkpoint: Path | None  # newest checkpoint on disk when training stopped
    model_path: Path | None  # the exported model (None when canceled)
    module: DreamBoothModule | None = field(default=None, repr=False)  # the trained module, for callers


@dataclass
class RunHooks:
    """What a caller plugs in: progress reports, a cancel check, extra callbacks."""

    on_progress: ProgressFn | None = None
    should_cancel: Callable[[], bool] | None = None
    callbacks: list[pl.Callback] = field(default_factory=list)
    on_checkpoint: Callable[[Path, list[Path]], None] | None = None  # (saved, pruned) after each save
    on_export: Callable[[], None] | None = None  # training is over, the export starts
    progress_interval_s: float = 0.5


class SamplesDone:
    """Samples each device has trained on so far (a picklable callable, so DDP spawn can ship it)."""

    def __init__(self, module: pl.LightningModule, samples_per_step: int):
        self.module = module
        self.samples_per_step = samples_per_step

    def __call__(self) -> int:
        return self.module.global_step * self.samples_per_step


def resolve_precision(requested: str, accelerator: str) -> str:
    if accelerator == "cpu" and requested != "32":
        log.warning("mixed precision %s asked for, but training on CPU: using 32-bit", requested)
        return "32"
    if requested == "bf16-mixed" and accelerator == "gpu" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16: using 16-mixed")
        return "16-mixed"
    return requested


def build_trainer(config: FinetuneConfig, workdir: Path, callbacks: list[pl.Callback],
                  resume_step: int | None = None, *, accelerator: str | None = None,
                  strategy: str | None = None) -> pl.Trainer:
    """`strategy` for several devices: `ddp` when the process was started by a script Lightning can launch
    again per rank (the CLI), `ddp_spawn` (the default) otherwise."""
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    accelerator = accelerator or ("gpu" if torch.cuda.is_available() else "cpu")
    devices = config.devices
    logs = workdir / "logs"
    # CSVLogger rewrites an existing metrics.csv: a resumed run writes its own file next to the first one
    csv_version = "csv" if resume_step is None else f"csv-resumed-at-step-{resume_step:06d}"
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=(strategy or "ddp_spawn") if devices > 1 else "auto",
        precision=resolve_precision(config.mixed_precision, accelerator),
        max_steps=config.max_train_steps,
        max_epochs=-1,
        accumulate_grad_batches=config.gradient_accumulation_steps,
        gradient_clip_val=config.max_grad_norm,
        callbacks=[*callbacks, LearningRateMonitor(logging_interval="step")],
        logger=[TensorBoardLogger(logs, name="", version="tensorboard"), CSVLogger(logs, name="", version=csv_version)],
        log_every_n_steps=1,
        enable_checkpointing=False,  # CheckpointEvery saves and prunes
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # the data stream splits samples across ranks itself
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(workdir),
    )


def build_loader(config: FinetuneConfig, base_model: Path, module: DreamBoothModule,
                 instance_images: Sequence[Image.Image], class_images: Sequence[Image.Image]):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer")
    prior = config.with_prior_preservation
    if prior and not class_images:
        raise ValueError("with_prior_preservation needs class images")
    stream = DreamBoothStream(
        instance_images, tokenize(tokenizer, config.instance_prompt), resolution=config.resolution,
        seed=config.seed, center_crop=config.center_crop, random_flip=config.random_flip,
        class_images=class_images if prior else (),
        class_prompt_ids=tokenize(tokenizer, config.class_prompt) if prior else None,
        start=SamplesDone(module, config.train_batch_size * config.gradient_accumulation_steps),
    )
    return torch.utils.data.DataLoader(stream, batch_size=config.train_batch_size, collate_fn=collate,
                                       num_workers=0)


def build_callbacks(config: FinetuneConfig, workdir: Path,
                    hooks: RunHooks) -> tuple[list[pl.Callback], CheckpointEvery, CancelWatcher]:
    checkpoints = CheckpointEvery(workdir / "checkpoints", config.checkpoint_every, config.keep_last_checkpoints,
                                  on_saved=hooks.on_checkpoint)
    cancel = CancelWatcher(hooks.should_cancel or _never)
    callbacks: list[pl.Callback] = []
    if hooks.on_progress is not None:
        callbacks.append(ProgressReporter(hooks.on_progress, config.max_train_steps, hooks.progress_interval_s))
    callbacks += hooks.callbacks
    if config.validation_prompts:
        callbacks.append(ValidationImages(
            config.validation_prompts, config.validation_every, workdir / "logs" / "validation",
            num_images=config.num_validation_images, inference_steps=config.validation_inference_steps,
            guidance_scale=config.validation_guidance_scale, resolution=config.resolution, seed=config.seed,
        ))
    # order matters: a step's reports, hooks and samples run before its checkpoint, the cancel check last
    return [*callbacks, checkpoints, cancel], checkpoints, cancel


def _never() -> bool:
    return False


def train_dreambooth(config: FinetuneConfig, base_model: Path, instance_images: Sequence[Image.Image],
                     workdir: Path, *, class_images: Sequence[Image.Image] = (),
                     hooks: RunHooks | None = None, export: bool = True, accelerator: str | None = None,
                     strategy: str | None = None) -> TrainResult:
    """Train (or resume) under `workdir` (checkpoints/, logs/, model/). `config` must be resolved.
    With several devices every rank runs this; only rank 0 writes files."""
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = DreamBoothModule(config, base_model)
    loader = build_loader(config, base_model, module, instance_images, class_images)
    callbacks, checkpoints, cancel = build_callbacks(config, workdir, hooks or RunHooks())
    resume = newest_checkpoint(ckpt_dir)
    trainer = build_trainer(config, workdir, callbacks, checkpoint_step(resume) if resume else None,
                            accelerator=accelerator, strategy=strategy)
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume) if resume else None)

    metrics = {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith("train/")}
    if cancel.canceled:
        kept = checkpoints.save(trainer)  # keep the state of the last step trained
        return TrainResult(trainer.global_step, True, metrics, resume, kept, None, module)
    if trainer.global_step > 0 and trainer.global_step % config.checkpoint_every:
        checkpoints.save(trainer)  # so a crash during export resumes at the end, not steps before it
    if hooks is not None and hooks.on_export is not None and export:
        hooks.on_export()
    model_path = export_model(module, workdir / "model") if export and trainer.is_global_zero else None
    return TrainResult(trainer.global_step, False, metrics, resume, newest_checkpoint(ckpt_dir), model_path,
                       module)
