"""The precision guard's verdict, cached on disk, so a restart does not run the guard again.

A verdict (the chosen precision and engine, every trial's hmean / match rate / images/s) is stored as JSON under
``<data_dir>/detection/guard/`` (beside the quantized-model cache), in a file named by a key that hashes
everything the verdict depends on: the model file(s), the requested precision and the candidates this device
offers, the quantized models' cache keys, the validation set (count, size, photographs, renderer version), the
guard's limits, the pre/post-processing, the batching shapes, the thread count, the libraries' versions and the
CPU's capabilities. Change any of these and the key changes: the guard runs again. An unreadable or mismatched
file is ignored (the guard runs), never fatal.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .engine_selection import calibration_spec, candidates_for
from .engines.base import Shape
from .models import ResolvedModel
from .postprocess import PostprocessConfig
from .precision_guard import GuardLimits, Trial
from .preprocess import NormalizeConfig, ResizeConfig
from .quantize import cache_key, model_digest
from .settings import DetectionSettings
from .textset import SET_VERSION

log = logging.getLogger(__name__)

# the runtimes the guard measures, the quantizer, and what renders the validation set
LIBRARIES = ("openvino", "onnxruntime", "onnxruntime-gpu", "paddlepaddle", "paddlepaddle-gpu", "nncf", "torch",
             "tensorrt", "numpy", "opencv-python-headless", "opencv-python", "pillow", "scikit-image")
VERSION = 1  # of the file's layout


class GuardVerdict(BaseModel):
    """One guard run's outcome, as stored."""

    version: int = VERSION
    key: str
    parts: dict[str, Any]  # what the key hashes, kept readable for whoever opens the file
    measured_at: datetime
    precision: str
    label: str
    reason: str
    seconds: float  # the guard's run time when it was measured
    trials: list[Trial]


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu_identity() -> dict[str, Any]:
    """What decides which kernels the engines pick: the machine type and OpenVINO's view of the CPU."""
    from .engines.openvino_engine import cpu_capabilities

    try:
        capabilities = sorted(cpu_capabilities())
    except Exception as exc:  # noqa: BLE001 - no OpenVINO CPU plugin: the machine type must do
        capabilities = [f"unknown ({type(exc).__name__})"]
    return {"machine": platform.machine(), "capabilities": capabilities}


def key_parts(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
              normalize: NormalizeConfig, postprocess: PostprocessConfig,
              buckets: Sequence[Shape]) -> dict[str, Any]:
    """Everything the guard's verdict depends on (JSON-ready)."""
    candidates = candidates_for(model, settings, resize, normalize, postprocess, buckets)
    quantized = {m: cache_key(model.path, calibration_spec(m, settings, resize, normalize, postprocess))
                 for m in settings.int8_methods}
    return {
        "model": {"name": model.name, "format": model.format, "sha256": model_digest(model.path)},
        "requested": settings.precision,
        "engine": settings.engine, "device": settings.device, "gpu_id": settings.gpu_id,
        "threads": settings.threads,
        "candidates": [[c.precision, c.label] for c in candidates],
        "quantized_keys": quantized,
        "validation": {"images": settings.guard_images, "real_images": settings.guard_real_images,
                       "max_side": settings.textset_max_side, "set_version": SET_VERSION},
        "limits": asdict(GuardLimits(settings.guard_max_hmean_drop, settings.guard_min_match_rate)),
        "processing": {"resize": asdict(resize), "normalize": asdict(normalize),
                       "postprocess": asdict(postprocess)},
        "batching": {"mode": settings.bucket_mode, "sides": settings.bucket_sides},
        "libraries": library_versions(),
        "cpu": cpu_identity(),
    }


def verdict_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def verdict_path(cache_dir: Path, model_name: str, key: str) -> Path:
    return cache_dir / f"{model_name}-{key}.json"


def load_verdict(path: Path, key: str) -> GuardVerdict | None:
    """The stored verdict for ``key``, or None (absent, unreadable, another key, or its quantized model gone)."""
    if not path.is_file():
        return None
    try:
        verdict = GuardVerdict.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("ignoring the cached guard verdict %s (%s: %s); running the guard", path,
                    type(exc).__name__, str(exc)[:200])
        return None
    if verdict.version != VERSION or verdict.key != key:
        log.warning("ignoring the cached guard verdict %s: stored for another key; running the guard", path)
        return None
    chosen = next((t for t in verdict.trials if t.engine == verdict.label and t.accepted), None)
    built = (chosen.build or {}).get("quantization", {}).get("path") if chosen else None
    if chosen is None or built and not Path(built).is_file():
        log.warning("ignoring the cached guard verdict %s: its chosen engine %s is gone; running the guard",
                    path, verdict.label)
        return None
    return verdict


def worth_caching(trials: Sequence[Trial]) -> bool:
    """Only a guard that ran to the end: the reference measured, no candidate failed to build (a failure may be
    passing: memory, a full disk), so the next start tries again."""
    failed = any(t.reason.startswith("failed") for t in trials)
    return bool(trials) and trials[0].hmean is not None and not failed


def save_verdict(path: Path, verdict: GuardVerdict) -> None:
    """Atomically (a reader sees the old file or the new one); a failure to write is logged, never raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".verdict-", suffix=".json",
                                         delete=False) as tmp:
            tmp.write(verdict.model_dump_json(indent=1))
        os.replace(tmp.name, path)
        log.info("precision guard verdict cached in %s", path)
    except OSError as exc:
        log.warning("could not cache the guard verdict in %s: %s", path, exc)


def now() -> datetime:
    return datetime.now(UTC)
