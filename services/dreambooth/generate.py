"""The `generate` job: validated params → cached model → CFG sampling → PNGs in the artifact store."""

import io
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import ValidationError

from services.dreambooth.base_models import BaseModelError, resolve_base_model
from services.dreambooth.gen_params import MAX_SEED, GenerateParams
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
from services.jobs.lifecycle import JobCanceled, JobFailed
from services.jobs.schema import Job, Progress
from services.jobs.settings import JobSettings
from services.jobs.store import JobNotFound, JobStore

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

    store: JobStore
    artifacts: ArtifactStore
    data_dir: Path
    settings: DreamboothSettings

    def __post_init__(self) -> None:
        self.device = pick_device(self.settings.device)
        self.dtype = pick_dtype(self.settings.dtype, self.device)
        self.cache = PipelineCache(int(self.settings.pipeline_cache_gb * 1e9))

    # models
    def model(self, model_id: str, owner: str) -> LoadedModel:
        """The loaded model for 'base' or a fine-tune id the owner may use. Raises JobFailed for user errors."""
        if model_id == BASE:
            return self._cached(f"base:{self.settings.sd_base_model}", self.settings.sd_base_model, None)
        try:
            info = self.store.get_model(model_id, owner)
        except JobNotFound:
            raise JobFailed("unknown_model", f"no fine-tuned model {model_id!r}: use 'base' or the id of a "
                                             "succeeded fine-tune job (GET /models lists them)") from None
        return self._cached(f"{info.get('method', 'full')}:{model_id}", info.get("base_model"), (model_id, info))

    def _cached(self, key: str, base_spec: str | None, finetune: tuple[str, dict] | None) -> LoadedModel:
        try:
            base = resolve_base_model(base_spec, self.data_dir, self.settings.sd_single_file_config)
        except BaseModelError as e:
            raise JobFailed("model_unavailable", str(e)) from e
        if finetune is None:
            return self.cache.get(key, lambda: load_pipeline_folder(BASE, base, self.device, self.dtype),
                                  estimate_bytes=folder_bytes(base))
        model_id, info = finetune
        local = self._local_artifact(info["path"], model_id)
        if info.get("method") == "lora":
            return self.cache.get(key, lambda: load_lora_model(model_id, base, local, self.device, self.dtype),
                                  estimate_bytes=folder_bytes(base))
        return self.cache.get(key, lambda: load_pipeline_folder(model_id, local, self.device, self.dtype),
                              estimate_bytes=folder_bytes(local))

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
        try:
            params = GenerateParams.model_validate(job.spec.get("params", {}))
        except ValidationError as e:  # the gateway validates first; this guards jobs made another way
            raise JobFailed("invalid_params", str(e)) from e
        t0 = time.perf_counter()
        model = self.model(params.model, job.owner)
        t_load = time.perf_counter() - t0
        base_seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)
        seeds = params.image_seeds(base_seed)

        def on_step(done: int, total: int) -> None:
            if self.store.cancel_requested(job.id):
                raise JobCanceled()
            self.store.report_progress(job.id, Progress(step=done, total=total,
                                                        eta_s=(time.perf_counter() - t1) / done * (total - done)))

        t1 = time.perf_counter()
        images = sample(model, [params.prompt] * len(seeds), [params.negative_prompt] * len(seeds), seeds,
                        guidance_scale=params.guidance_scale, num_inference_steps=params.num_inference_steps,
                        width=params.width, height=params.height, scheduler=params.scheduler, on_step=on_step)
        t_sample = time.perf_counter() - t1
        params = params.model_copy(update={"seed": base_seed})  # the result repeats exactly with these params
        return self._store_images(job.id, params, model, seeds, images,
                                  timings={"load_s": round(t_load, 3), "sample_s": round(t_sample, 3)})

    def _store_images(self, job_id: str, params: GenerateParams, model: LoadedModel, seeds: list[int],
                      images: list[Image.Image], timings: dict[str, float]) -> dict[str, Any]:
        out = []
        for i, (image, seed) in enumerate(zip(images, seeds)):
            text = {"prompt": params.prompt, "negative_prompt": params.negative_prompt, "seed": seed,
                    "steps": params.num_inference_steps, "guidance_scale": params.guidance_scale,
                    "scheduler": params.scheduler.value, "model": params.model,
                    "width": params.width, "height": params.height, "software": "DetBooth"}
            key = self.artifacts.write_bytes(f"jobs/{job_id}/images/{i}.png", png_bytes(image, text))
            out.append({"key": key, "seed": seed})
        result: dict[str, Any] = {
            "images": out, "model": params.model, "params": params.model_dump(mode="json"),
            "timings": timings,
        }
        if model.random_weights:
            result["warning"] = "the base model is the tiny random test model: images are noise"
        return result


_worker: GenerationWorker | None = None


def worker_for(job_settings: JobSettings, store: JobStore) -> GenerationWorker:
    """This process's generation worker (its model cache lives as long as the process)."""
    global _worker
    if _worker is None or _worker.store is not store:
        _worker = GenerationWorker(store=store, artifacts=ArtifactStore(job_settings.artifacts_location),
                                   data_dir=job_settings.data_dir, settings=DreamboothSettings())
    return _worker
