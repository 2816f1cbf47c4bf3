"""Accuracy-aware int8: NNCF's ``quantize_with_accuracy_control``, scored the way the precision guard judges.

Plain post-training quantization of the PP-OCR DB nets loses ~0.01 hmean (mostly in the neck's residual
squeeze-excitation layers), twice what the guard allows. NNCF's accuracy control quantizes, then ranks the
quantized layers by how much each costs on a held-out split and reverts the worst to float until the drop is
within ``max_drop``. The held-out split is more calibration renders (the ones after the calibration images),
never the guard's validation images.

The metric folds the guard's two rules into one number that is highest for the float model itself:
``min(hmean, fp32 hmean - MATCH_WEIGHT * share of fp32's boxes unmatched)``. A drop of ``d`` therefore bounds
the hmean drop by ``d`` and the unmatched share by ``d / MATCH_WEIGHT``: with the defaults (0.0025, 0.25) half
of the guard's limits on each (0.005 hmean, 2 % of boxes), margin for images the held-out split did not see.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .evaluation import box_match_rate, detection_score
from .postprocess import DBPostProcessor, PostprocessConfig
from .preprocess import NormalizeConfig, ResizeConfig, preprocess
from .textset import TextSample, accuracy_control_set

log = logging.getLogger(__name__)

MATCH_WEIGHT = 0.25  # hmean points one unmatched share of fp32's boxes costs in the metric


@dataclass(frozen=True)
class AccuracyControl:
    images: int = 32  # held-out calibration renders the metric runs on
    max_drop: float = 0.0025  # of the metric, absolute
    max_iterations: int = 20  # revert steps at most (each re-validates the model)
    ranking_images: int = 8  # held-out images NNCF ranks the layers on (fewer: faster ranking)


def guard_score(found: Sequence[Sequence], truth: Sequence[Sequence], reference: Sequence[Sequence],
                reference_hmean: float) -> float:
    """The guard's two rules as one number: hmean, capped by how many of fp32's boxes are matched."""
    unmatched = 1.0 - box_match_rate(found, reference)
    return min(detection_score(found, truth).hmean, reference_hmean - MATCH_WEIGHT * unmatched)


class GuardMetric:
    """``validation_fn`` for NNCF: the guard score of a compiled model on the held-out renders, in total and per
    image (NNCF ranks layers by the per-image values). fp32's boxes come from the float model, run once here."""

    def __init__(self, samples: Sequence[TextSample], resize: ResizeConfig, normalize: NormalizeConfig,
                 postprocess: PostprocessConfig) -> None:
        self.samples = list(samples)
        self.tensors = [preprocess(s.image, resize, normalize)[None] for s in self.samples]
        self.postprocessor = DBPostProcessor(postprocess)
        self.reference: list[list[np.ndarray]] = []
        self.reference_hmean: list[float] = []

    def boxes(self, compiled, index: int) -> list[np.ndarray]:
        prob = compiled(self.tensors[index])[compiled.output(0)]
        prob = prob[:, 0] if prob.ndim == 4 else prob
        return [b.points for b in self.postprocessor(np.asarray(prob[0], dtype=np.float32),
                                                     self.samples[index].image.shape[:2])]

    def set_reference(self, compiled) -> None:
        self.reference = [self.boxes(compiled, i) for i in range(len(self.samples))]
        self.reference_hmean = [detection_score([b], [s.polygons]).hmean
                                for b, s in zip(self.reference, self.samples)]

    def __call__(self, compiled, indices) -> tuple[float, list[float]]:
        indices = list(indices)
        found = [self.boxes(compiled, i) for i in indices]
        truth = [self.samples[i].polygons for i in indices]
        reference = [self.reference[i] for i in indices]
        per_image = [guard_score([f], [self.samples[i].polygons], [self.reference[i]], self.reference_hmean[i])
                     for f, i in zip(found, indices)]
        total = guard_score(found, truth, reference, detection_score(reference, truth).hmean)
        return total, per_image


def quantize_with_guard_metric(model, calibration: list[np.ndarray], control: AccuracyControl, first_held_out: int,
                               max_side: int, resize: ResizeConfig, normalize: NormalizeConfig,
                               postprocess: PostprocessConfig, **quantize_options):
    """The int8 OpenVINO model, with the layers that cost the guard score reverted to float."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    metric = GuardMetric(accuracy_control_set(first_held_out, control.images, max_side), resize, normalize,
                         postprocess)
    metric.set_reference(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
    held_out = nncf.Dataset(list(range(len(metric.samples))), lambda i: metric.tensors[i])
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=control.max_iterations,
                                                  ranking_subset_size=control.ranking_images)
    return nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calibration), held_out, metric, max_drop=control.max_drop,
        drop_type=nncf.DropType.ABSOLUTE, advanced_accuracy_restorer_parameters=restorer, **quantize_options)
