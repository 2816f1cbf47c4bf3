"""The rendered calibration/validation sets: deterministic, disjoint, with truth that fits the drawn ink."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from shapely.geometry import Polygon

from services.detection.preprocess import NormalizeConfig, ResizeConfig, resized_shape
from services.detection.textset import (calibration_batches, calibration_set, real_samples, render_sample,
                                        sample_seed, validation_set)
from services.detection.textset import fonts as fonts_module

COUNT = 12


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_rendering_is_deterministic():
    a, b = render_sample(1234), render_sample(1234)
    assert np.array_equal(a.image, b.image)
    assert len(a.polygons) == len(b.polygons) and all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons))
    assert not np.array_equal(a.image, render_sample(1235).image)


def test_calibration_and_validation_never_share_an_image():
    seeds_c = {sample_seed("calibration", i) for i in range(200)}
    seeds_v = {sample_seed("validation", i) for i in range(200)}
    assert len(seeds_c) == len(seeds_v) == 200 and not seeds_c & seeds_v
    calibration = {digest(s.image) for s in calibration_set(COUNT)}
    validation = {digest(s.image) for s in validation_set(COUNT)}
    assert len(calibration) == COUNT and len(validation) == COUNT + 2  # + scikit-image's two photos
    assert not calibration & validation


def test_samples_are_varied_and_fit_the_limits():
    samples = validation_set(COUNT, real_extras=False)
    shapes = {s.image.shape[:2] for s in samples}
    assert len(shapes) == COUNT and all(max(hw) <= 960 and s.image.dtype == np.uint8
                                        for hw, s in zip(shapes, samples))
    lines = [p for s in samples for p in s.polygons]
    assert all(2 <= len(s.polygons) <= 9 for s in samples)
    assert any(len(p) > 4 for p in lines), "no curved line"
    quads = [p for p in lines if len(p) == 4]
    angles = [abs(np.degrees(np.arctan2(*(q[1] - q[0])[::-1]))) for q in quads]
    assert any(a > 5 for a in angles) and any(a < 0.5 for a in angles), "rotated and straight lines expected"
    # dark and light backgrounds both occur over a few images
    assert min(s.image.mean() for s in samples) < 120 < max(s.image.mean() for s in samples)


def test_truth_polygons_hold_the_ink_and_do_not_overlap():
    for sample in validation_set(6, real_extras=False):
        gray = sample.image.astype(np.float32).mean(axis=2)
        background = np.median(gray)
        shapes = [Polygon(p) for p in sample.polygons]
        for i, shape in enumerate(shapes):
            assert shape.is_valid and shape.area > 40
            assert not any(shape.intersects(other) for other in shapes[i + 1:])
            x0, y0, x1, y1 = (int(v) for v in shape.bounds)
            inside = np.abs(gray[y0:y1 + 1, x0:x1 + 1] - background)
            assert inside.max() > 60, f"{sample.name}: no ink inside line {i}"


def test_real_extras_come_from_scikit_image():
    page, sign = real_samples()
    assert page.image.shape == (191, 384, 3) and len(page.polygons) == 7
    assert sign.polygons is None and not sign.has_truth
    assert [s.name for s in validation_set(2)[-2:]] == ["skimage-page", "skimage-text"]


def test_calibration_batches_are_preprocessed_as_serving_does():
    resize, norm = ResizeConfig(960, "max"), NormalizeConfig()
    batches = list(calibration_batches(resize, norm, count=3))
    samples = calibration_set(3)
    assert len(batches) == 3
    for batch, sample in zip(batches, samples):
        h, w = resized_shape(*sample.image.shape[:2], resize)
        assert batch.shape == (1, 3, h, w) and batch.dtype == np.float32
        assert -2.2 < batch.min() < 0 < batch.max() < 2.7  # ImageNet-normalised


def test_missing_fonts_say_which_package(monkeypatch, tmp_path):
    monkeypatch.setattr(fonts_module, "FONT_ROOTS", (tmp_path,))
    with pytest.raises(fonts_module.FontsMissing, match="fonts-wqy-microhei"):
        fonts_module.check_fonts()
