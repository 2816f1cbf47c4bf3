"""Detection quality as pure functions: precision / recall / hmean against ground truth (ICDAR-style one-to-one
matching at polygon IoU >= 0.5), and how many of a reference engine's boxes another engine reproduces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from shapely.geometry import Polygon
from shapely.validation import make_valid

MIN_IOU = 0.5


def _shape(points) -> Polygon:
    poly = Polygon(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    poly = poly if poly.is_valid else make_valid(poly)
    # a box squashed to a line (integer rounding of a thin rotated box) has no area: half a pixel around it
    # gives it one, so it still matches its twin
    return poly if poly.area > 0 else poly.buffer(0.5)


def polygon_iou(a, b) -> float:
    pa, pb = _shape(a), _shape(b)
    union = pa.union(pb).area
    return float(pa.intersection(pb).area / union) if union > 0 else 0.0


def match_count(found: Sequence, truth: Sequence, min_iou: float = MIN_IOU) -> int:
    """How many pairs a greedy one-to-one matching (highest IoU first) makes at IoU >= ``min_iou``."""
    if not found or not truth:
        return 0
    shapes_f, shapes_t = [_shape(p) for p in found], [_shape(p) for p in truth]
    pairs = []
    for i, f in enumerate(shapes_f):
        for j, t in enumerate(shapes_t):
            if not f.intersects(t):
                continue
            union = f.union(t).area
            iou = f.intersection(t).area / union if union > 0 else 0.0
            if iou >= min_iou:
                pairs.append((iou, i, j))
    used_f, used_t = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_f)


@dataclass(frozen=True)
class Score:
    matched: int
    found: int
    truth: int

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 0.0

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 0.0

    @property
    def hmean(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def detection_score(found_per_image: Sequence[Sequence], truth_per_image: Sequence[Sequence],
                    min_iou: float = MIN_IOU) -> Score:
    """Precision, recall and hmean summed over images (matches, detections and truths pooled, as ICDAR does)."""
    if len(found_per_image) != len(truth_per_image):
        raise ValueError("one list of detections per image with truth is needed")
    matched = sum(match_count(f, t, min_iou) for f, t in zip(found_per_image, truth_per_image))
    return Score(matched, sum(map(len, found_per_image)), sum(map(len, truth_per_image)))


def box_match_rate(found_per_image: Sequence[Sequence], reference_per_image: Sequence[Sequence],
                   min_iou: float = MIN_IOU) -> float:
    """Share of the reference engine's boxes that ``found`` matches one-to-one at IoU >= ``min_iou`` (1.0 when the
    reference found nothing)."""
    if len(found_per_image) != len(reference_per_image):
        raise ValueError("one list of boxes per image is needed on both sides")
    total = sum(map(len, reference_per_image))
    if total == 0:
        return 1.0
    return sum(match_count(f, r, min_iou) for f, r in zip(found_per_image, reference_per_image)) / total
