"""The service's lifecycle (Cog-style states): resolve each model, load and guard its engine, warm every bucket,
serve, stop. Loading runs in the background so /healthz answers at once and /readyz tells what is happening.

A deployment serves one model or several (`DETBOOTH_DETECTION_MODELS`): each has its own engine, precision decision,
batcher (with its own queue bound) and detector; a request picks one by name, or gets the default."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from services.contracts.detect import DetectionModel
from services.contracts.problems import Problem

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


@dataclass
class ServedModel:
    """One loaded model: everything a request for it runs through."""

    name: str  # as requests name it (an entry of DETBOOTH_DETECTION_MODELS)
    settings: DetectionSettings
    model: ResolvedModel | None = None
    selection: Selection | None = None
    batcher: DynamicBatcher | None = None
    detector: Detector | None = None
    engine_info: dict[str, object] = field(default_factory=dict)
    error: str | None = None

    @property
    def precision(self) -> str:
        return self.selection.precision if self.selection is not None else "fp32"

    @property
    def ready(self) -> bool:
        return self.detector is not None

    def view(self, default: str) -> DetectionModel:
        m = self.model
        return DetectionModel(
            id=self.name, served=m.name if m else None, display_name=m.display_name if m else self.name,
            fallback=bool(m and m.is_fallback), precision=self.precision if self.selection else None,
            engine=str(self.engine_info.get("engine")) if self.engine_info else None, default=self.name == default,
            ready=self.ready, error=self.error)

    def readiness(self) -> dict[str, object]:
        body: dict[str, object] = {"ready": self.ready}
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
            precision: dict[str, object] = {
                "requested": self.settings.precision, "serving": sel.precision, "engine": sel.label,
                "reason": sel.reason, "guard_seconds": round(sel.seconds, 2),
                "tried": [t.model_dump(exclude_none=True) for t in sel.trials],
            }
            if sel.guard is not None:
                precision["guard"] = sel.guard
            body["precision"] = precision
        if self.batcher is not None:
            b = self.batcher
            body["buckets"] = {"mode": self.settings.bucket_mode, "sides": b.bucket_sides,
                               "total": len(b.buckets), "warmup": len(b.warmup_shapes),
                               "warmed": b.warmed_buckets // b.engine_workers}
            body["queue_depth"] = b.queue_depth
            body["max_queue_images"] = b.max_queue_images  # this model's own bound: 503 beyond it
        if self.detector is not None:
            d = self.detector
            body["defaults"] = {"limit_side_len": d.resize.limit_side_len, "limit_type": d.resize.limit_type,
                                "max_side_limit": d.resize.max_side_limit, **d.postprocess.__dict__}
        return body


class DetectionService:
    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.state = State.STARTING
        self.error: str | None = None
        self.default = settings.model
        self.served = {name: ServedModel(name, settings.for_model(name)) for name in settings.served_models}
        self.pool = ThreadPoolExecutor(settings.pool_workers, thread_name_prefix="det-cpu")

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    async def start(self) -> None:
        for served in self.served.values():  # one at a time: each guard run wants every core
            try:
                await self._load(served)
            except Exception as exc:
                log.exception("detection model %s failed to load", served.name)
                served.error = f"{type(exc).__name__}: {exc}"
                if served.name == self.default:  # without the default there is nothing to serve
                    self.error = served.error
                    self.state = State.SETUP_FAILED
                    return
        self.state = State.READY

    async def _load(self, served: ServedModel) -> None:
        s = served.settings
        self.state = State.LOADING
        served.model = await asyncio.to_thread(resolve_model, s)
        yml = served.model.inference_yml
        resize, normalize, postprocess = resize_config(yml, s), normalize_config(yml), postprocess_config(yml, s)
        self.state = State.GUARDING
        served.selection = await asyncio.to_thread(isolated_guarded_engine, served.model, s, resize, normalize,
                                                   postprocess, all_buckets(s.bucket_sides))
        engine = served.selection.engine
        served.batcher = DynamicBatcher(
            engine, max_batch_size=s.max_batch_size, max_queue_delay_ms=s.max_queue_delay_ms,
            max_queue_images=s.max_queue_images, bucket_sides=s.bucket_sides,
            pad_to_buckets=s.bucket_mode == "padded", pow2_batches=s.pow2_batches,
            max_batch_pixels=s.max_batch_pixels, engine_workers=max(s.engine_workers, engine.parallel),
            warmup=s.warmup, on_batch=self.metrics.observe_batch, on_idle=trim_native_heap,
            on_busy=trim_native_heap if s.heap_trim_every_s else None, busy_every_s=s.heap_trim_every_s,
        )
        served.engine_info = engine.describe()
        self.state = State.WARMING_UP
        await served.batcher.start()
        served.detector = Detector(served.batcher, self.pool, resize, normalize, postprocess,
                                   s.limits.max_image_pixels, s.request_timeout_s,
                                   max_pages=s.limits.max_pages, dpi=s.limits.document_dpi)
        log.info("detection model %s ready: %s (%s) at %s on %s", served.name, served.model.display_name,
                 served.model.source, served.precision, served.engine_info)

    def model_for(self, name: str | None) -> ServedModel:
        """The loaded model a request names (by its configured or its served name), or the default; a name
        that is not loaded here is a 422 that lists the ones that are."""
        if name is None:
            return self.served[self.default]
        found = self.served.get(name) or next(
            (m for m in self.served.values() if m.model is not None and m.model.name == name), None)
        if found is not None and found.ready:
            return found
        available = [m.name for m in self.served.values() if m.ready]
        why = f"{name} failed to load ({found.error})" if found is not None and found.error else \
            f"{name} is not loaded here"
        raise Problem(422, "Unknown model", f"{why}; available: {', '.join(available)}", type_="unknown-model",
                      available=available)

    def models(self) -> list[DetectionModel]:
        return [m.view(self.default) for m in self.served.values()]

    async def stop(self) -> None:
        self.state = State.STOPPING
        for served in self.served.values():
            if served.batcher is not None:
                await served.batcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def queue_depth(self) -> int:
        return sum(m.batcher.queue_depth for m in self.served.values() if m.batcher is not None)

    def readiness(self) -> dict[str, object]:
        """The default model's details at the top (as with one model), every model's under `models`."""
        body: dict[str, object] = {"ready": self.ready, "state": str(self.state)}
        if self.error:
            body["error"] = self.error
        default = self.served[self.default].readiness()
        default.pop("ready")
        body.update(default)
        body["default_model"] = self.default
        body["models"] = {name: m.readiness() for name, m in self.served.items()}
        body["limits"] = self.settings.limits.model_dump()
        return body
