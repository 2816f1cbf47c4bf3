"""The calibration and validation sets: rendered images from two disjoint seed streams, plus real photos.

Calibration images feed quantization (NNCF, ONNX Runtime static QDQ, TensorRT INT8); validation images judge the
result (the precision guard). They never share an image: each split draws its seeds from its own
``SeedSequence`` spawn key, and the test suite checks the images themselves are disjoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import cv2
import numpy as np

from ..preprocess import NormalizeConfig, ResizeConfig, preprocess
from .fonts import check_fonts
from .render import TextSample, render_sample

SPLITS = {"calibration": 1, "validation": 2}
SET_VERSION = 1  # bump when rendering changes, so cached quantized models are rebuilt

# Lines of scikit-image's data.page() (384 x 191), marked by hand: title, five lines of prose, one of code.
PAGE_LINES = ((5, 10, 295, 35), (3, 46, 378, 66), (2, 62, 380, 86), (2, 80, 380, 104), (4, 98, 380, 121),
              (4, 115, 173, 140), (15, 166, 241, 190))


def sample_seed(split: str, index: int) -> int:
    """The rendering seed of image ``index`` of ``split``; the two splits' streams are independent."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
    return int(np.random.SeedSequence(entropy=20261202, spawn_key=(SPLITS[split], index)).generate_state(1)[0])


@lru_cache(maxsize=512)
def rendered(split: str, index: int, max_side: int = 960) -> TextSample:
    check_fonts()
    return render_sample(sample_seed(split, index), f"{split}-{index:03d}", max_side=max_side)


def rendered_set(split: str, count: int, max_side: int = 960) -> list[TextSample]:
    return [rendered(split, i, max_side) for i in range(count)]


def calibration_set(count: int = 32, max_side: int = 960) -> list[TextSample]:
    return rendered_set("calibration", count, max_side)


def accuracy_control_set(first: int, count: int, max_side: int = 960) -> list[TextSample]:
    """Calibration-split images ``first`` .. ``first + count - 1``: held out from the calibration images before
    them, for accuracy-aware quantization to score against (still never a validation image)."""
    return [rendered("calibration", i, max_side) for i in range(first, first + count)]


def validation_set(count: int = 32, max_side: int = 960, real_extras: bool = True) -> list[TextSample]:
    """``count`` rendered images, then (``real_extras``) scikit-image's photographs of text."""
    samples = rendered_set("validation", count, max_side)
    return samples + real_samples() if real_extras else samples


def _quad(box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


@lru_cache(maxsize=1)
def _real() -> tuple[TextSample, ...]:
    import skimage.data

    page = cv2.cvtColor(skimage.data.page(), cv2.COLOR_GRAY2BGR)
    sign = cv2.cvtColor(skimage.data.text(), cv2.COLOR_GRAY2BGR)  # a photographed sign, no marked lines
    return (TextSample("skimage-page", page, tuple(_quad(b) for b in PAGE_LINES)),
            TextSample("skimage-text", sign, None))


def real_samples() -> list[TextSample]:
    """scikit-image's text photographs: page() with hand-marked lines, text() for engine agreement only."""
    return list(_real())


def calibration_batches(resize: ResizeConfig, normalize: NormalizeConfig, count: int = 32,
                        max_side: int = 960) -> Iterator[np.ndarray]:
    """Calibration images preprocessed exactly as serving does (DetResizeForTest + NormalizeImage), one
    1 x 3 x H x W float32 batch each: what NNCF, ONNX Runtime's CalibrationDataReader and a TensorRT INT8
    calibrator consume."""
    for sample in calibration_set(count, max_side):
        yield preprocess(sample.image, resize, normalize)[None]
