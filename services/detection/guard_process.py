"""The precision guard in a child process, so the serving process holds only the engine it serves.

Quantizing and guarding load the fp32 engine and every candidate (and NNCF, ONNX Runtime's quantizer...): memory
the C++ runtimes do not give back when an engine is closed (the process held ~1.5 GB after the guard, against
~0.3 GB for one engine). The child runs ``guarded_engine``, reports the choice and every trial, and exits with
all of that; the parent then builds the chosen engine alone, from the caches the child filled (quantized
models, TensorRT engines), so that second build takes seconds. The verdict itself is cached too
(``guard_cache``): a later start with the same key skips the child and builds the chosen engine at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import guard_cache
from .engine_selection import candidates_for, engine_label, fp32_settings, guarded_engine
from .engines import create_engine
from .engines.base import Engine, Shape
from .models import ResolvedModel
from .postprocess import PostprocessConfig
from .precision_guard import Selection, Trial
from .preprocess import NormalizeConfig, ResizeConfig
from .settings import DetectionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """What the guard chose, without the engine (which stays in the child)."""

    precision: str
    label: str
    trials: list[Trial]
    reason: str
    seconds: float


def _guard_child(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                 normalize: NormalizeConfig, postprocess: PostprocessConfig, buckets: Sequence[Shape],
                 log_level: int) -> Choice:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [guard]: %(message)s")
    selection = guarded_engine(model, settings, resize, normalize, postprocess, buckets)
    selection.engine.close()
    return Choice(selection.precision, selection.label, selection.trials, selection.reason, selection.seconds)


def build_chosen(choice: Choice, model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                 normalize: NormalizeConfig, postprocess: PostprocessConfig, buckets: Sequence[Shape]) -> Engine:
    """The engine ``choice`` names, loaded: the fp32 reference or the candidate with that label."""
    reference = create_engine(model, fp32_settings(settings))
    if choice.label == engine_label(reference, "fp32"):
        reference.load(buckets, settings.max_batch_size)
        return reference
    for candidate in candidates_for(model, settings, resize, normalize, postprocess, buckets):
        if candidate.label == choice.label:
            return candidate.build()[0]
    raise RuntimeError(f"the guard chose {choice.label}, which this process cannot build")


def _cached_selection(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                      normalize: NormalizeConfig, postprocess: PostprocessConfig,
                      buckets: Sequence[Shape]) -> tuple[Selection | None, Path | None, dict | None]:
    """(the selection from a cached verdict or None, where the verdict belongs, what its key hashes).
    Never raises: the cache only saves time, so on any trouble the guard runs."""
    started = time.perf_counter()
    try:
        parts = guard_cache.key_parts(model, settings, resize, normalize, postprocess, buckets)
        key = guard_cache.verdict_key(parts)
        path = guard_cache.verdict_path(settings.guard_cache_dir, model.name, key)
    except Exception as exc:  # noqa: BLE001
        log.warning("precision guard: no verdict cache (%s: %s)", type(exc).__name__, exc, exc_info=True)
        return None, None, None
    verdict = guard_cache.load_verdict(path, key)
    if verdict is None:
        return None, path, parts
    try:
        choice = Choice(verdict.precision, verdict.label, verdict.trials, verdict.reason, verdict.seconds)
        engine = build_chosen(choice, model, settings, resize, normalize, postprocess, buckets)
    except Exception as exc:  # noqa: BLE001
        log.warning("precision guard: the cached verdict's engine did not build (%s: %s); running the guard",
                    type(exc).__name__, exc, exc_info=True)
        return None, path, parts
    log.info("precision guard: verdict from the cache (measured %s): %s", verdict.measured_at.isoformat(),
             verdict.reason)
    guard = {"cached": True, "measured_at": verdict.measured_at.isoformat(),
             "measured_seconds": round(verdict.seconds, 2), "key": key, "path": str(path)}
    return (Selection(engine, verdict.precision, verdict.label, verdict.trials, verdict.reason,
                      time.perf_counter() - started, guard), path, parts)


def isolated_guarded_engine(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                            normalize: NormalizeConfig, postprocess: PostprocessConfig,
                            buckets: Sequence[Shape]) -> Selection:
    """``guarded_engine``'s selection, with the guard run in a child process (spawned: no inherited threads),
    or its verdict from the cache. fp32 needs no guard and runs in-process. If the child fails, the guard's own
    rule holds: serve fp32."""
    if settings.precision == "fp32":
        return guarded_engine(model, settings, resize, normalize, postprocess, buckets)
    path = parts = None
    if settings.guard_cache:
        cached, path, parts = _cached_selection(model, settings, resize, normalize, postprocess, buckets)
        if cached is not None:
            return cached
    context = multiprocessing.get_context("spawn")
    try:
        with context.Pool(1) as pool:
            choice = pool.apply(_guard_child, (model, settings, resize, normalize, postprocess, list(buckets),
                                               logging.getLogger().getEffectiveLevel()))
        measured_at = guard_cache.now()
        log.info("precision guard (in %.1f s, in a child process): %s", choice.seconds, choice.reason)
        engine = build_chosen(choice, model, settings, resize, normalize, postprocess, buckets)
    except Exception as exc:  # noqa: BLE001 - never fatal: fp32, and say why
        reason = f"the guard could not run in its process ({type(exc).__name__}: {exc}); serving fp32"
        log.warning("precision guard: %s", reason)
        engine = create_engine(model, fp32_settings(settings))
        engine.load(buckets, settings.max_batch_size)
        label = engine_label(engine, "fp32")
        return Selection(engine, "fp32", label, [Trial(precision="fp32", engine=label, accepted=True,
                                                       reason=reason)], reason, 0.0)
    guard: dict[str, object] = {"cached": False, "measured_at": measured_at.isoformat()}
    if path is not None and parts is not None and guard_cache.worth_caching(choice.trials):
        key = guard_cache.verdict_key(parts)
        guard_cache.save_verdict(path, guard_cache.GuardVerdict(
            key=key, parts=parts, measured_at=measured_at, precision=choice.precision, label=choice.label,
            reason=choice.reason, seconds=choice.seconds, trials=choice.trials))
        guard |= {"key": key, "path": str(path)}
    return Selection(engine, choice.precision, choice.label, choice.trials, choice.reason, choice.seconds, guard)
