"""The `generate` job: validated params → cached model → CFG sampling → PNGs in the artifact store."""

import io
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import ValidationError

from services.contracts.generate import MAX_SEED, GeneratedImage, GenerateParams, GenerateResult
from services.contracts.jobs import Job, JobStatus, JobType, Progress
from services.dreambooth.base_models import BaseModelError, resolve_base_model
from services.dreambooth.model_loading import (
    folder_bytes,
    load_lora_model,
    load_pipeline_folder,
    pick_device,
    pick_dtype,
)
from services.dreambooth.pipeline_cache import LoadedModel, PipelineCache
from services.dreambooth.sampling import sample
from services.dreambooth.settings import DreamboothSettings
from services.jobs.artifacts import ArtifactStore
from services.jobs.interface import JobNotFound, JobSystem, TransitionRefused
from services.jobs.lifecycle import JobCanceled, JobFailed
from services.jobs.settings import JobSettings

log = logging.getLogger(__name__)

BASE = "base"


def png_bytes(image: Image.Image, text: dict[str, Any]) -> bytes:
    """The image as PNG with `text` in tEXt chunks (prompt, seed, steps, ...)."""
    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, str(v))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@dataclass
class GenerationWorker:
    """Per-process state of a generate worker: where models and images live, and the loaded-model cache."""

    store: JobSystem
    artifacts: ArtifactStore
    data_dir: Path
    settings: DreamboothSettings

    def __post_init__(self) -> None:
        self.device = pick_device(self.settings.device)
        self.dtype = pick_dtype(self.settings.dtype, self.device)
        self.cache = PipelineCache(int(self.settings.pipeline_cache_gb * 1e9))
        self.claims = (
            # the same lease length as every job's (renewed each step), so a dead worker's batch is
            # taken over as soon as its jobs are redelivered
            self.store.batch_claims(lease_s=JobSettings().job_lease_s)
            if self.settings.gen_batch_same_shape else None
        )

    # models
    def model(self, model_id: str, owner: str) -> LoadedModel:
        """The loaded model for 'base' or a fine-tune id the owner may use; JobFailed for user errors."""
        if model_id == BASE:
            return self._cached(f"base:{self.settings.sd_base_model}", self.settings.sd_base_model, None)
        try:
            info = self.store.get_model(model_id, owner)
        except JobNotFound:
            # deleted (or never made): drop this worker's copy of its files and its loaded pipeline too
            shutil.rmtree(self.data_dir / "cache" / "models" / model_id, ignore_errors=True)
            self.cache.drop_matching(f":{model_id}")
            raise JobFailed(
                "unknown_model",
                f"no fine-tuned model {model_id!r}: use 'base' or the id of a "
                "succeeded fine-tune job (GET /models lists them)",
            ) from None
        return self._cached(
            f"{info.get('method', 'full')}:{model_id}", info.get("base_model"), (model_id, info)
        )

    def _cached(self, key: str, base_spec: str | None, finetune: tuple[str, dict] | None) -> LoadedModel:
        try:
            base = resolve_base_model(base_spec, self.data_dir, self.settings.sd_single_file_config)
        except BaseModelError as e:
            raise JobFailed("model_unavailable", str(e)) from e
        if finetune is None:
            return self.cache.get(
                key,
                lambda: load_pipeline_folder(BASE, base, *self._placement),
                estimate_bytes=folder_bytes(base),
            )
        model_id, info = finetune
        local = self._local_artifact(info["path"], model_id)
        if info.get("method") == "lora":
            return self.cache.get(
                key,
                lambda: load_lora_model(model_id, base, local, *self._placement),
                estimate_bytes=folder_bytes(base),
            )
        return self.cache.get(
            key,
            lambda: load_pipeline_folder(model_id, local, *self._placement),
            estimate_bytes=folder_bytes(local),
        )

    @property
    def _placement(self) -> tuple:
        return self.device, self.dtype, self.settings.gen_compile

    def _local_artifact(self, key: str, model_id: str) -> Path:
        """A local path for a model artifact (a folder or a file), downloading it once from remote stores."""
        if not self.artifacts.exists(key):
            raise JobFailed("model_unavailable", f"the files of model {model_id!r} are missing ({key})")
        if self.artifacts.is_local:
            return self.artifacts.local_path(key)
        dest = self.data_dir / "cache" / "models" / model_id / Path(key).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if self.artifacts.is_file(key):
                tmp = dest.with_suffix(dest.suffix + ".part")
                tmp.write_bytes(self.artifacts.read_bytes(key))
                tmp.replace(dest)
            else:
                self.artifacts.download_dir(key, dest)
        return dest

    # jobs
    def run(self, job: Job) -> dict[str, Any]:
        """Run one generate job; with batching on, also same-shape jobs waiting in the queue."""
        request = self._request(job)
        if self.claims is None:
            return self._run_batch(request, [])
        earlier = self.claims.wait_for_holder(job.id)  # another worker may have run it in its batch
        if earlier is not None:
            return earlier
        self.claims.claim(job.id)
        try:
            others = self._take_same_shape(request)
        except Exception:
            self.claims.release(job.id)
            raise
        try:
            return self._run_batch(request, others)
        finally:
            self.claims.release(job.id)

    def _request(self, job: Job) -> "GenerateRequest":
        try:
            params = GenerateParams.model_validate(job.spec.get("params", {}))
        except ValidationError as e:  # the gateway validates first; this guards jobs made another way
            raise JobFailed("invalid_params", str(e)) from e
        base_seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)
        # the recorded params repeat the result exactly
        return GenerateRequest(job, params.model_copy(update={"seed": base_seed}))

    def _run_batch(self, primary: "GenerateRequest", others: list["GenerateRequest"]) -> dict[str, Any]:
        """Sample every request's images in one call; finish the others here, return the primary's result."""
        batch = [primary, *others]
        try:
            t0 = time.perf_counter()
            model = self.model(primary.params.model, primary.job.owner)
            t_load = time.perf_counter() - t0
            t1 = time.perf_counter()
            images = self._sample(model, batch, t1)
            t_sample = time.perf_counter() - t1
        except BaseException:
            for r in others:  # their own messages are still queued: give them back
                self._requeue(r.job.id)
            raise
        timings = {"load_s": round(t_load, 3), "sample_s": round(t_sample, 3)}
        n_images = sum(len(r.seeds) for r in batch)
        results: list[dict[str, Any] | None] = []
        start = 0
        for r in batch:
            own = images[start : start + len(r.seeds)]
            start += len(r.seeds)
            canceled = self.store.cancel_requested(r.job.id)
            results.append(None if canceled else self._store_images(r, model, own, timings, n_images))
        for r, result in zip(others, results[1:]):
            self._finish_other(r.job.id, result)
        if results[0] is None:
            raise JobCanceled()
        return results[0]

    def _sample(
        self, model: LoadedModel, batch: list["GenerateRequest"], t_start: float
    ) -> list[Image.Image]:
        p = batch[0].params
        job_ids = [r.job.id for r in batch]

        def on_step(done: int, total: int) -> None:
            canceled = [self.store.cancel_requested(j) for j in job_ids]
            if all(canceled):
                raise JobCanceled()
            eta = (time.perf_counter() - t_start) / done * (total - done)
            for job_id, c in zip(job_ids, canceled):
                if not c:
                    self.store.report_progress(job_id, Progress(step=done, total=total, eta_s=eta))
            if self.claims is not None:
                self.claims.renew(job_ids)

        prompts = [r.params.prompt for r in batch for _ in r.seeds]
        negatives = [r.params.negative_prompt for r in batch for _ in r.seeds]
        seeds = [s for r in batch for s in r.seeds]
        return sample(
            model,
            prompts,
            negatives,
            seeds,
            guidance_scale=p.guidance_scale,
            num_inference_steps=p.num_inference_steps,
            width=p.width,
            height=p.height,
            scheduler=p.scheduler,
            on_step=on_step,
        )

    # batching of other queued jobs (only with DETBOOTH_GEN_BATCH_SAME_SHAPE)
    def _take_same_shape(self, primary: "GenerateRequest") -> list["GenerateRequest"]:
        """Claim queued generate jobs that can share the primary's pipeline call, oldest first."""
        room = self.settings.gen_max_batch_images - len(primary.seeds)
        taken: list[GenerateRequest] = []
        if room <= 0:
            return taken
        for job_id in self.store.queued_job_ids(JobType.generate):
            if job_id == primary.job.id:
                continue
            try:
                job = self.store.get(job_id)
                other = self._request(job)
            except (JobNotFound, JobFailed):
                continue
            if (
                job.status != JobStatus.queued
                or job.cancel_requested
                or len(other.seeds) > room
                or other.batch_key != primary.batch_key
                or (other.params.model != BASE and job.owner != primary.job.owner)
            ):
                continue
            if not self.claims.claim(job_id):
                continue
            try:
                self.store.transition(job_id, JobStatus.running, expected={JobStatus.queued})
            except (TransitionRefused, JobNotFound):
                self.claims.release(job_id)
                continue
            taken.append(other)
            room -= len(other.seeds)
            if room == 0:
                break
        if taken:
            log.info("job %s: batching %d queued job(s) into its pipeline call", primary.job.id, len(taken))
        return taken

    def _finish_other(self, job_id: str, result: dict[str, Any] | None) -> None:
        """Record a batched job's end: its result, or canceled (None)."""
        try:
            if result is None:
                self.store.transition(job_id, JobStatus.canceled, expected={JobStatus.running})
                self.claims.release(job_id)
            else:
                self.claims.publish(job_id, result)
                self.store.transition(
                    job_id, JobStatus.succeeded, expected={JobStatus.running}, result=result
                )
        except (TransitionRefused, JobNotFound) as e:
            log.warning("batched job %s could not be finished: %s", job_id, e)

    def _requeue(self, job_id: str) -> None:
        try:
            self.store.transition(job_id, JobStatus.queued, expected={JobStatus.running})
        except (TransitionRefused, JobNotFound):
            pass
        self.claims.release(job_id)

    def _store_images(
        self,
        r: "GenerateRequest",
        model: LoadedModel,
        images: list[Image.Image],
        timings: dict[str, float],
        batch_images: int,
    ) -> dict[str, Any]:
        params, out = r.params, []
        for i, (image, seed) in enumerate(zip(images, r.seeds)):
            text = {
                "prompt": params.prompt,
                "negative_prompt": params.negative_prompt,
                "seed": seed,
                "steps": params.num_inference_steps,
                "guidance_scale": params.guidance_scale,
                "scheduler": params.scheduler.value,
                "model": params.model,
                "width": params.width,
                "height": params.height,
                "software": "DetBooth",
            }
            key = self.artifacts.write_bytes(f"jobs/{r.job.id}/images/{i}.png", png_bytes(image, text))
            out.append(GeneratedImage(key=key, seed=seed))
        warning = "the base model is the tiny random test model: images are noise" if model.random_weights else None
        return GenerateResult(images=out, model=params.model, params=params.model_dump(mode="json"),
                              timings=timings, batch_images=batch_images,
                              warning=warning).model_dump(mode="json", exclude_none=True)


@dataclass
class GenerateRequest:
    job: Job
    params: GenerateParams  # with the seed fixed

    @property
    def seeds(self) -> list[int]:
        return self.params.image_seeds(self.params.seed)

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        p = self.params
        return (p.model, p.width, p.height, p.num_inference_steps, p.scheduler, p.guidance_scale)


_worker: GenerationWorker | None = None


def worker_for(job_settings: JobSettings, store: JobSystem) -> GenerationWorker:
    """This process's generation worker (its model cache lives as long as the process)."""
    global _worker
    if _worker is None or _worker.store is not store:
        _worker = GenerationWorker(
            store=store,
            artifacts=ArtifactStore(job_settings.artifacts_location),
            data_dir=job_settings.data_dir,
            settings=DreamboothSettings(),
        )
    return _worker
