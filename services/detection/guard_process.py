"""The precision guard in a child process, so the serving process holds only the engine it serves.

Quantizing and guarding load the fp32 engine and every candidate (and NNCF, ONNX Runtime's quantizer...): memory
the C++ runtimes do not give back when an engine is closed (the process held ~1.5 GB after the guard, against
~0.3 GB for one engine). The child runs ``guarded_engine``, reports the choice and every trial, and exits with
all of that; the parent then builds the chosen engine alone, from the caches the child filled (quantized
models, TensorRT engines), so that second build takes seconds.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass

from .engine_selection import cpu_candidates, engine_label, fp32_settings, gpu_candidates, guarded_engine
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
                 normalize: NormalizeConfig, buckets: Sequence[Shape]) -> Engine:
    """The engine ``choice`` names, loaded: the fp32 reference or the candidate with that label."""
    reference = create_engine(model, fp32_settings(settings))
    if choice.label == engine_label(reference, "fp32"):
        reference.load(buckets, settings.max_batch_size)
        return reference
    candidates = (gpu_candidates(model, settings, buckets) if settings.device == "gpu"
                  else cpu_candidates(model, settings, resize, normalize, buckets))
    for candidate in candidates:
        if candidate.label == choice.label:
            return candidate.build()[0]
    raise RuntimeError(f"the guard chose {choice.label}, which this process cannot build")


def isolated_guarded_engine(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                            normalize: NormalizeConfig, postprocess: PostprocessConfig,
                            buckets: Sequence[Shape]) -> Selection:
    """``guarded_engine``'s selection, with the guard run in a child process (spawned: no inherited threads).
    fp32 needs no guard and runs in-process. If the child fails, the guard's own rule holds: serve fp32."""
    if settings.precision == "fp32":
        return guarded_engine(model, settings, resize, normalize, postprocess, buckets)
    context = multiprocessing.get_context("spawn")
    try:
        with context.Pool(1) as pool:
            choice = pool.apply(_guard_child, (model, settings, resize, normalize, postprocess, list(buckets),
                                               logging.getLogger().getEffectiveLevel()))
        log.info("precision guard (in %.1f s, in a child process): %s", choice.seconds, choice.reason)
        engine = build_chosen(choice, model, settings, resize, normalize, buckets)
    except Exception as exc:  # noqa: BLE001 - never fatal: fp32, and say why
        reason = f"the guard could not run in its process ({type(exc).__name__}: {exc}); serving fp32"
        log.warning("precision guard: %s", reason)
        engine = create_engine(model, fp32_settings(settings))
        engine.load(buckets, settings.max_batch_size)
        label = engine_label(engine, "fp32")
        return Selection(engine, "fp32", label, [Trial(precision="fp32", engine=label, accepted=True,
                                                       reason=reason)], reason, 0.0)
    return Selection(engine, choice.precision, choice.label, choice.trials, choice.reason, choice.seconds)
