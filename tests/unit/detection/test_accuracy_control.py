"""Accuracy-controlled int8 (NNCF ``quantize_with_accuracy_control``): the metric it restores is the guard's two
rules in one number, and it reverts layers to float until that metric is back within bounds on held-out
calibration renders."""

from __future__ import annotations

import numpy as np
import pytest

from services.detection.accuracy_control import MATCH_WEIGHT, guard_score
from services.detection.textset import accuracy_control_set, calibration_set, validation_set


def quad(x: float, y: float, w: float = 40, h: float = 10) -> np.ndarray:
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float32)


TRUTH = [[quad(0, 0), quad(0, 20), quad(0, 40), quad(0, 60)]]


def test_the_float_model_scores_its_own_hmean():
    reference = [[quad(0, 0), quad(0, 20), quad(0, 40), quad(100, 100)]]  # 3 of 4 right: hmean 0.75
    assert guard_score(reference, TRUTH, reference, 0.75) == pytest.approx(0.75)


def test_losing_fp32_boxes_costs_even_when_hmean_holds():
    reference = [[quad(0, 0), quad(0, 20), quad(0, 40), quad(100, 100)]]
    found = [[quad(0, 0), quad(0, 20), quad(0, 40), quad(300, 300)]]  # same hmean, a quarter of fp32's missed
    assert guard_score(found, TRUTH, reference, 0.75) == pytest.approx(0.75 - MATCH_WEIGHT * 0.25)


def test_a_lower_hmean_is_the_score_when_the_boxes_still_match():
    reference = [[quad(0, 0), quad(0, 20), quad(0, 40), quad(0, 60)]]
    found = [[quad(0, 0), quad(0, 20), quad(0, 40), quad(0, 60), quad(200, 0)]]  # one extra box: precision 0.8
    assert guard_score(found, TRUTH, reference, 1.0) == pytest.approx(2 * 0.8 / 1.8)


def test_held_out_images_are_calibration_renders_after_the_calibration_images():
    held_out = accuracy_control_set(3, 2, 320)
    assert [s.name for s in held_out] == [s.name for s in calibration_set(5, 320)[3:]]
    calibration = {s.image.tobytes() for s in calibration_set(3, 320)}
    validation = {s.image.tobytes() for s in validation_set(8, 320, False)}
    assert all(s.image.tobytes() not in calibration | validation for s in held_out)
