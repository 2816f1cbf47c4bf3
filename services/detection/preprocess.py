"""PaddleOCR's det pre-processing: ``DetResizeForTest`` (type 0) and ``NormalizeImage``, as pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

LimitType = Literal["min", "max", "resize_long"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ResizeConfig:
    limit_side_len: int = 960
    limit_type: LimitType = "max"
    max_side_limit: int = 4000

    def __post_init__(self) -> None:
        if self.limit_type not in ("min", "max", "resize_long"):
            raise ValueError(f"limit_type must be min, max or resize_long, not {self.limit_type!r}")
        if self.limit_side_len < 1 or self.max_side_limit < 32:
            raise ValueError("limit_side_len must be >= 1 and max_side_limit >= 32")


@dataclass(frozen=True)
class NormalizeConfig:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0 / 255.0


def resized_shape(height: int, width: int, cfg: ResizeConfig) -> tuple[int, int]:
    """The (h, w) DetResizeForTest gives an image: limited, capped at max_side_limit, rounded to multiples of 32."""
    side = float(cfg.limit_side_len)
    if cfg.limit_type == "max":
        ratio = side / max(height, width) if max(height, width) > side else 1.0
    elif cfg.limit_type == "min":
        ratio = side / min(height, width) if min(height, width) < side else 1.0
    else:  # resize_long
        ratio = side / max(height, width)
    resize_h, resize_w = int(height * ratio), int(width * ratio)
    if max(resize_h, resize_w) > cfg.max_side_limit:
        cap = float(cfg.max_side_limit) / max(resize_h, resize_w)
        resize_h, resize_w = int(resize_h * cap), int(resize_w * cap)
    resize_h = max(int(round(resize_h / 32) * 32), 32)
    resize_w = max(int(round(resize_w / 32) * 32), 32)
    return resize_h, resize_w


def resize_for_det(image: np.ndarray, cfg: ResizeConfig) -> np.ndarray:
    """Resize a BGR uint8 image to its DetResizeForTest shape (bilinear, as PaddleOCR's cv2.resize)."""
    h, w = resized_shape(image.shape[0], image.shape[1], cfg)
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h))


def normalize(image: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    """HWC uint8 BGR -> CHW float32, ``(x * scale - mean) / std`` per channel, in PaddleOCR's order."""
    # channel by channel into the one output array: the same float32 operations in the same order as
    # ``(x.astype(f32) * scale - mean) / std``, so the same values, without four image-sized temporaries
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    scale = np.float32(cfg.scale)
    for c in range(3):
        np.multiply(image[:, :, c], scale, out=out[c], dtype=np.float32)
        out[c] -= np.float32(cfg.mean[c])
        out[c] /= np.float32(cfg.std[c])
    return out


def preprocess(image: np.ndarray, resize: ResizeConfig, norm: NormalizeConfig) -> np.ndarray:
    """BGR uint8 HWC image -> normalised CHW float32 tensor at its DetResizeForTest shape."""
    return normalize(resize_for_det(image, resize), norm)
