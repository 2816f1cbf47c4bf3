"""The service's lifecycle (Cog-style states): resolve the model, load the engine, warm every bucket, serve, stop.
Loading runs in the background so /healthz answers at once and /readyz tells what is happening."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from .batcher import DynamicBatcher, all_buckets
from .guard_process import isolated_guarded_engine
from .memory import trim_native_heap
from .metrics import Metrics
from .models import ResolvedModel, normalize_config, postprocess_config, resize_config, resolve_model
from .pipeline import Detector
from .precision_guard import Selection
from .settings import DetectionSettings

log = logging.getLogger(__name__)


class State(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    GUARDING = "guarding"  # quantizing and running the precision guard
    WARMING_UP = "warming_up"
    READY = "ready"
    SETUP_FAILED = "setup_failed"
    STOPPING = "stopping"


class DetectionService:
    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.state = State.STARTING
        self.error: str | None = None
        self.model: ResolvedModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.detector: Detector | None = None
        self.engine_info: dict[str, object] = {}
        self.selection: Selection | None = None
        self.pool = ThreadPoolExecutor(settings.pool_workers, thread_name_prefix="det-cpu")

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    async def start(self) -> None:
        s = self.settings
        try:
            self.state = State.LOADING
            self.model = await asyncio.to_thread(resolve_model, s)
            yml = self.model.inference_yml
            resize, normalize, postprocess = resize_config(yml, s), normalize_config(yml), postprocess_config(yml, s)
            self.state = State.GUARDING
            self.selection = await asyncio.to_thread(isolated_guarded_engine, self.model, s, resize, normalize, postprocess,
                                                     all_buckets(s.bucket_sides))
            engine = self.selection.engine
            self.batcher = DynamicBatcher(
                engine, max_batch_size=s.max_batch_size, max_queue_delay_ms=s.max_queue_delay_ms,
                max_queue_images=s.max_queue_images, bucket_sides=s.bucket_sides, pad_to_buckets=s.bucket_mode == "padded", pow2_batches=s.pow2_batches, max_batch_pixels=s.max_batch_pixels,
                engine_workers=s.engine_workers,
                warmup=s.warmup, on_batch=self.metrics.observe_batch, on_idle=trim_native_heap,
            )
            self.engine_info = engine.describe()
            self.state = State.WARMING_UP
            await self.batcher.start()
            self.detector = Detector(self.batcher, self.pool, resize, normalize, postprocess,
                                     s.limits.max_image_pixels, s.request_timeout_s,
                                     max_pages=s.limits.max_pages, dpi=s.limits.document_dpi)
            self.state = State.READY
            log.info("detection ready: model %s (%s) at %s on %s", self.model.display_name, self.model.source,
                     self.precision, self.engine_info)
        except Exception as exc:
            log.exception("detection service setup failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = State.SETUP_FAILED

    async def stop(self) -> None:
        self.state = State.STOPPING
        if self.batcher is not None:
            await self.batcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def precision(self) -> str:
        return self.selection.precision if self.selection is not None else "fp32"

    def readiness(self) -> dict[str, object]:
        body: dict[str, object] = {"ready": self.ready, "state": str(self.state)}
        if self.error:
            body["error"] = self.error
        if self.model is not None:
            m = self.model
            body["model"] = {"name": m.display_name, "served": m.name, "requested": m.requested,
                             "source": m.source, "path": str(m.path), "fallback": m.is_fallback}
            if m.is_fallback:
                body["warning"] = (f"FALLBACK MODEL: {m.requested} is unavailable ({m.fallback_reason}); "
                                   f"serving {m.name} instead")
        if self.engine_info:
            body["engine"] = self.engine_info
        if self.selection is not None:
            sel = self.selection
            body["precision"] = {
                "requested": self.settings.precision, "serving": sel.precision, "engine": sel.label,
                "reason": sel.reason, "guard_seconds": round(sel.seconds, 2),
                "tried": [t.model_dump(exclude_none=True) for t in sel.trials],
            }
        if self.batcher is not None:
            b = self.batcher
            body["buckets"] = {"mode": self.settings.bucket_mode, "sides": b.bucket_sides,
                               "total": len(b.buckets), "warmed": b.warmed_buckets // b.engine_workers}
            body["queue_depth"] = self.batcher.queue_depth
        body["limits"] = self.settings.limits.model_dump()
        if self.detector is not None:
            d = self.detector
            body["defaults"] = {"limit_side_len": d.resize.limit_side_len, "limit_type": d.resize.limit_type,
                                "max_side_limit": d.resize.max_side_limit, **d.postprocess.__dict__}
        return body
