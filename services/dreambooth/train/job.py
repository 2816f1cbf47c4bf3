"""The body of the `finetune(job_id)` task: a job record in, a registered model out.

Layout in the artifact store (all under `jobs/<id>/`):
    inputs/NNN.png      the uploaded instance images (written by the gateway)
    config.yaml         the resolved config; written once, so a resumed job trains with the same settings
    checkpoints/        step-NNNNNN.ckpt, the newest `keep_last_checkpoints` (removed once the job succeeds)
    logs/               tensorboard/, csv/metrics.csv, validation/step-NNNNNN/*.png
    model/              the export: a diffusers folder (full) or pytorch_lora_weights.safetensors (lora)
    model.json          the model's owner and registration, from which a lost Redis is rebuilt

A re-delivered task (worker died) finds config.yaml and the newest checkpoint and resumes from there.
Once the model is exported and registered only model/, config.yaml and logs/ remain (train/retention.py).
"""

import importlib.util
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from services.contracts.finetune import (
    MAX_INSTANCE_IMAGES,
    MIN_INSTANCE_IMAGES,
    ConfigError,
    FinetuneConfig,
    FinetuneResult,
    TrainingMetrics,
)
from services.contracts.jobs import Job, Phase, PhaseProgress, Progress
from services.jobs.artifacts import ArtifactStore
from services.jobs.interface import JobSystem, TransitionRefused
from services.jobs.lifecycle import JobCanceled, JobFailed

log = logging.getLogger(__name__)


def job_config(job: Job, artifacts: ArtifactStore) -> FinetuneConfig:
    """The job's resolved config: the saved one when the job ran before, else the spec's, resolved and saved."""
    key = f"jobs/{job.id}/config.yaml"
    if artifacts.exists(key):
        return FinetuneConfig.from_yaml(artifacts.read_bytes(key).decode())
    try:
        config = FinetuneConfig.parse(job.spec.get("config", {}))
    except ConfigError as e:
        raise JobFailed("invalid_config", str(e)) from None
    config = config.resolved(seed=random.SystemRandom().randrange(2**31))
    artifacts.write_bytes(key, config.to_yaml().encode())
    return config


def load_instance_images(job: Job, artifacts: ArtifactStore, config: FinetuneConfig) -> list:
    from services.dreambooth.data import BadImage, load_training_image

    keys = list(job.spec.get("inputs", []))
    if not MIN_INSTANCE_IMAGES <= len(keys) <= MAX_INSTANCE_IMAGES:
        raise JobFailed("invalid_input", f"a fine-tune needs {MIN_INSTANCE_IMAGES} to {MAX_INSTANCE_IMAGES} "
                                         f"instance images; got {len(keys)}")
    images = []
    for i, key in enumerate(keys):
        try:
            with artifacts.open(key) as fh:
                images.append(load_training_image(fh, min_side=config.min_image_side, name=f"image {i}"))
        except FileNotFoundError:
            raise JobFailed("invalid_input", f"image {i} ({key}) is missing from the artifact store") from None
        except BadImage as e:
            raise JobFailed("invalid_input", str(e)) from None
    return images


class _Reporter:
    """A fine-tune's progress: which phase it is in and each phase's step, total, ETA and rate. The top-level
    step/total/eta stay the training steps (the job's main measure); the latest training metrics ride along."""

    def __init__(self, store: JobSystem, job_id: str, training_total: int):
        self.store, self.job_id = store, job_id
        self.training_total = training_total
        self.phase: Phase | None = None
        self.phases: dict[Phase, PhaseProgress] = {}
        self.metrics: dict[str, float] = {}
        self._started: tuple[float, int] = (0.0, 0)  # (when, step) the phase began in this run

    def enter(self, phase: Phase, total: int, step: int = 0) -> None:
        self.phase = phase
        self._started = (time.monotonic(), step)
        self.phases[phase] = PhaseProgress(step=step, total=total)
        self._send()

    def advance(self, step: int, total: int | None = None) -> None:
        """The current phase reached `step`; its rate and ETA are measured over this run of the phase."""
        assert self.phase is not None
        current = self.phases[self.phase]
        total = current.total if total is None else total
        t0, step0 = self._started
        elapsed = time.monotonic() - t0
        rate = (step - step0) / elapsed if elapsed > 0 and step > step0 else None
        eta = (total - step) / rate if rate else (0.0 if step >= total else None)
        self.phases[self.phase] = PhaseProgress(step=step, total=total, eta_s=eta,
                                                it_per_s=round(rate, 4) if rate else None)
        self._send()

    def __call__(self, step: int, total: int, eta_s: float | None, metrics: dict[str, float]) -> None:
        """A report of the training loop (train/callbacks.ProgressReporter)."""
        self.phase = Phase.training
        self.metrics = metrics
        self.phases[Phase.training] = PhaseProgress(step=step, total=total, eta_s=eta_s,
                                                    it_per_s=metrics.get("it_per_s"))
        self._send()

    def _send(self) -> None:
        training = self.phases.get(Phase.training, PhaseProgress(total=self.training_total))
        progress = Progress(step=training.step, total=training.total, eta_s=training.eta_s, phase=self.phase,
                            phases=self.phases)
        try:
            self.store.report_progress(self.job_id, progress, self.metrics or None)
        except TransitionRefused:
            pass  # the job left `running` (e.g. expired); the cancel check stops training
        except Exception:  # progress is best effort: a Redis blip must not kill a long training run
            log.warning("progress report for job %s failed", self.job_id, exc_info=True)

    def should_cancel(self) -> bool:
        try:
            return self.store.cancel_requested(self.job_id)
        except Exception:
            log.warning("cancel check for job %s failed", self.job_id, exc_info=True)
            return False

    def class_image_done(self, done: int, total: int) -> None:
        """After each batch of class images: progress, and a cancel stops the generation there."""
        self.advance(done, total)
        if self.should_cancel():
            raise JobCanceled()


def run_finetune_job(job: Job, store: JobSystem, artifacts: ArtifactStore, data_dir: Path,
                     base_model_spec: str | None = None, single_file_config: str | None = None,
                     class_cache_bytes: int | None = None) -> dict[str, Any]:
    from services.dreambooth.base_models import BaseModelError, resolve_base_model
    from services.dreambooth.class_images import ensure_class_images
    from services.dreambooth.data import load_training_image
    from services.dreambooth.train.retention import keep_only_the_model, write_model_manifest
    from services.dreambooth.train.run import RunHooks, train_dreambooth

    config = job_config(job, artifacts)
    reporter = _Reporter(store, job.id, config.max_train_steps)
    reporter.enter(Phase.preparing, total=2)  # 1: config and photos read, 2: base model found
    if config.devices > 1:
        raise JobFailed("invalid_config", "devices: the Celery worker trains on one GPU (run one worker per GPU); "
                                          "multi-GPU DDP runs through `python -m services.dreambooth.train`")
    if config.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise JobFailed("invalid_config", "use_8bit_adam: bitsandbytes is not installed on this worker "
                                          "(pip install bitsandbytes, CUDA only), or set use_8bit_adam to false")
    instance_images = load_instance_images(job, artifacts, config)
    reporter.advance(1)
    base_spec = config.base_model or base_model_spec or "tiny"
    try:
        base = resolve_base_model(base_spec, data_dir, single_file_config)
    except BaseModelError as e:
        raise JobFailed("base_model_unavailable", str(e)) from None
    reporter.advance(2)

    class_images = []
    if config.with_prior_preservation:
        reporter.enter(Phase.class_images, total=config.num_class_images)
        paths = ensure_class_images(
            base, config.class_prompt, config.resolution, config.num_class_images, data_dir / "class_images",
            batch_size=config.class_images_batch_size, inference_steps=config.class_images_inference_steps,
            on_progress=reporter.class_image_done,
            max_cache_bytes=class_cache_bytes,
        )
        reporter.advance(len(paths))  # also when every one came from the cache
        if reporter.should_cancel():
            raise JobCanceled()
        class_images = [load_training_image(p, min_side=1) for p in paths]

    prefix = f"jobs/{job.id}"
    local = artifacts.is_local
    # a local store is trained in place; a remote one (S3...) gets a scratch folder, with every checkpoint
    # mirrored as soon as it is written so that a worker on another machine can resume
    workdir = artifacts.local_path(prefix) if local else Path(tempfile.mkdtemp(prefix=f"finetune-{job.id}-"))
    hooks = RunHooks(on_progress=reporter, should_cancel=reporter.should_cancel,
                     on_checkpoint=None if local else _mirror_checkpoints(artifacts, f"{prefix}/checkpoints"),
                     on_export=lambda: reporter.enter(Phase.exporting, total=1))
    reporter.enter(Phase.training, total=config.max_train_steps)  # the model loads, then the steps count
    try:
        if not local and artifacts.exists(f"{prefix}/checkpoints"):
            artifacts.download_dir(f"{prefix}/checkpoints", workdir / "checkpoints")
        result = train_dreambooth(config, base, instance_images, workdir, class_images=class_images, hooks=hooks)
        if not local:
            for part in ("logs", "model"):
                if (workdir / part).exists():
                    artifacts.upload_dir(workdir / part, f"{prefix}/{part}")
    finally:
        if not local:
            shutil.rmtree(workdir, ignore_errors=True)
    if result.canceled:
        raise JobCanceled()
    reporter.advance(1)  # exported (and uploaded)

    model_key = f"{prefix}/model" + ("/" + result.model_path.name if config.method == "lora" else "")
    info = {
        "method": config.method,
        "format": "lora_safetensors" if config.method == "lora" else "diffusers",
        "base_model": base_spec,
        "instance_prompt": config.instance_prompt,
        "class_prompt": config.class_prompt,
        "resolution": config.resolution,
        "path": model_key,
        "job_id": job.id,
        "train_text_encoder": config.train_text_encoder,
        "steps": result.global_step,
        "prediction_type": result.module.prediction_type,
    }
    if config.method == "lora":
        info["lora"] = {"rank": config.lora.rank, "alpha": config.lora.scale_alpha}
    write_model_manifest(artifacts, job.owner, job.id, info)  # what a lost Redis is rebuilt from
    store.register_model(job.owner, job.id, info)
    removed = keep_only_the_model(artifacts, prefix)
    log.info("job %s: kept the model, config and logs; removed %s", job.id, ", ".join(removed) or "nothing")
    return FinetuneResult(
        model_id=job.id,
        model=model_key,
        method=config.method,
        config=f"{prefix}/config.yaml",
        logs=f"{prefix}/logs",
        steps=result.global_step,
        resumed_from_step=_step_of(result.resumed_from),
        metrics=TrainingMetrics.model_validate(result.metrics),
    ).model_dump(mode="json")


def _mirror_checkpoints(artifacts: ArtifactStore, prefix: str):
    def mirror(saved: Path, pruned: list[Path]) -> None:
        with open(saved, "rb") as src, artifacts.open(f"{prefix}/{saved.name}", "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 * 2**20)
        for gone in pruned:
            artifacts.delete(f"{prefix}/{gone.name}")

    return mirror


def _step_of(path: Path | None) -> int | None:
    from services.dreambooth.train.callbacks import checkpoint_step

    return checkpoint_step(path) if path is not None else None
