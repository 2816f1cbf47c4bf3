"""DB (Differentiable Binarization) post-processing with PaddleOCR's semantics.

Pure and stateless apart from its settings, so one instance is safe to share between threads.
A probability map (H x W, the network's resized input size) becomes boxes in source-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

ScoreMode = Literal["fast", "slow"]
BoxType = Literal["quad", "poly"]

MIN_SIDE = 3  # PaddleOCR's DBPostProcess.min_size


@dataclass(frozen=True)
class PostprocessConfig:
    thresh: float = 0.3
    box_thresh: float = 0.6
    max_candidates: int = 1000
    unclip_ratio: float = 1.5
    use_dilation: bool = False
    score_mode: ScoreMode = "fast"
    box_type: BoxType = "quad"

    def __post_init__(self) -> None:
        if not 0.0 <= self.thresh <= 1.0:
            raise ValueError(f"thresh must be in [0, 1], got {self.thresh}")
        if not 0.0 <= self.box_thresh <= 1.0:
            raise ValueError(f"box_thresh must be in [0, 1], got {self.box_thresh}")
        if self.unclip_ratio <= 0:
            raise ValueError(f"unclip_ratio must be > 0, got {self.unclip_ratio}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.score_mode not in ("fast", "slow"):
            raise ValueError(f"score_mode must be fast or slow, not {self.score_mode!r}")
        if self.box_type not in ("quad", "poly"):
            raise ValueError(f"box_type must be quad or poly, not {self.box_type!r}")


@dataclass(frozen=True)
class DetectedBox:
    points: np.ndarray  # (K, 2) int32, source-image pixels; K == 4 for quads (tl, tr, br, bl)
    score: float


def mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rectangle as (tl, tr, br, bl) float32 points and its shorter side."""
    rect = cv2.minAreaRect(contour)
    pts = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = (pts[0], pts[1]) if pts[1][1] > pts[0][1] else (pts[1], pts[0])  # (top, bottom)
    right = (pts[2], pts[3]) if pts[3][1] > pts[2][1] else (pts[3], pts[2])
    box = np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)
    return box, min(rect[1])


def mean_score_in_polygon(prob: np.ndarray, polygon: np.ndarray, round_out: bool) -> float:
    """Mean probability inside a polygon (its bounding box clipped to the map).

    ``round_out`` floors/ceils float bounds (PaddleOCR's box_score_fast); integer contours use them as is.
    """
    h, w = prob.shape
    pts = polygon.reshape(-1, 2)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if round_out:
        lo, hi = np.floor(lo), np.ceil(hi)
    xmin, xmax = (int(np.clip(v, 0, w - 1)) for v in (lo[0], hi[0]))
    ymin, ymax = (int(np.clip(v, 0, h - 1)) for v in (lo[1], hi[1]))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    shifted = (pts - np.array([xmin, ymin], dtype=pts.dtype)).astype(np.int32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2), 1)
    return float(cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0])


def unclip(polygon: np.ndarray, ratio: float) -> list[np.ndarray]:
    """Grow a polygon by ``area * ratio / perimeter`` (Vatti offset, round joins) -> resulting polygons."""
    shape = Polygon(polygon)
    if shape.length == 0:
        return []
    distance = shape.area * ratio / shape.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(polygon, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return [np.asarray(p) for p in offset.Execute(distance)]


def to_source(points: np.ndarray, map_hw: tuple[int, int], src_hw: tuple[int, int]) -> np.ndarray:
    """Scale map coordinates to the source image, rounded and clipped to [0, size] as PaddleOCR does."""
    (mh, mw), (sh, sw) = map_hw, src_hw
    out = np.array(points).reshape(-1, 2)  # float32 quads stay float32: PaddleOCR rounds in that precision
    if out.dtype.kind != "f":
        out = out.astype(np.float64)
    out[:, 0] = np.clip(np.round(out[:, 0] / mw * sw), 0, sw)
    out[:, 1] = np.clip(np.round(out[:, 1] / mh * sh), 0, sh)
    return out


def order_clockwise(pts: np.ndarray) -> np.ndarray:
    """tl, tr, br, bl by coordinate sum and difference (PaddleOCR's order_points_clockwise)."""
    rect = np.zeros((4, 2), dtype=np.float32)
    s = pts.sum(axis=1)
    rect[0], rect[2] = pts[np.argmin(s)], pts[np.argmax(s)]
    rest = np.delete(pts, (np.argmin(s), np.argmax(s)), axis=0)
    diff = np.diff(rest, axis=1)
    rect[1], rect[3] = rest[np.argmin(diff)], rest[np.argmax(diff)]
    return rect


def clip_to_image(pts: np.ndarray, src_hw: tuple[int, int]) -> np.ndarray:
    h, w = src_hw
    out = pts.copy()
    out[:, 0] = np.clip(out[:, 0], 0, w - 1)
    out[:, 1] = np.clip(out[:, 1], 0, h - 1)
    return np.trunc(out)


class DBPostProcessor:
    """Probability map -> text boxes. Holds only its (validated) settings."""

    def __init__(self, config: PostprocessConfig) -> None:
        self.config = config

    def __call__(self, prob: np.ndarray, src_hw: tuple[int, int]) -> list[DetectedBox]:
        cfg = self.config
        bitmap = (prob > cfg.thresh).astype(np.uint8)
        if cfg.use_dilation:
            bitmap = cv2.dilate(bitmap, np.ones((2, 2), dtype=np.uint8))
        contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        contours = contours[: cfg.max_candidates]
        if cfg.box_type == "poly":
            return self._polygons(prob, contours, src_hw)
        return self._quads(prob, contours, src_hw)

    def _quads(self, prob: np.ndarray, contours, src_hw) -> list[DetectedBox]:
        cfg = self.config
        boxes = []
        for contour in contours:
            points, short_side = mini_box(contour)
            if short_side < MIN_SIDE:
                continue
            if cfg.score_mode == "fast":
                score = mean_score_in_polygon(prob, points, round_out=True)
            else:
                score = mean_score_in_polygon(prob, contour.reshape(-1, 2), round_out=False)
            if score < cfg.box_thresh:
                continue
            grown = unclip(points, cfg.unclip_ratio)
            if not grown:
                continue
            quad, short_side = mini_box(np.concatenate(grown).reshape(-1, 1, 2))
            if short_side < MIN_SIDE + 2:
                continue
            quad = clip_to_image(order_clockwise(to_source(quad, prob.shape, src_hw)), src_hw)
            if int(np.linalg.norm(quad[0] - quad[1])) <= 3 or int(np.linalg.norm(quad[0] - quad[3])) <= 3:
                continue
            boxes.append(DetectedBox(quad.astype(np.int32), score))
        return boxes

    def _polygons(self, prob: np.ndarray, contours, src_hw) -> list[DetectedBox]:
        cfg = self.config
        boxes = []
        for contour in contours:
            epsilon = 0.002 * cv2.arcLength(contour, True)
            points = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
            if points.shape[0] < 4:
                continue
            score = mean_score_in_polygon(prob, points.astype(np.float32), round_out=True)
            if score < cfg.box_thresh:
                continue
            grown = unclip(points, cfg.unclip_ratio)
            if len(grown) != 1 or len(grown[0]) == 0:
                continue
            _, short_side = mini_box(grown[0].reshape(-1, 1, 2))
            if short_side < MIN_SIDE + 2:
                continue
            poly = clip_to_image(to_source(grown[0], prob.shape, src_hw), src_hw)
            boxes.append(DetectedBox(poly.astype(np.int32), score))
        return boxes
