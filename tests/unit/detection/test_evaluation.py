"""hmean against ground truth and box agreement between engines (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from services.detection.evaluation import box_match_rate, detection_score, match_count, polygon_iou


def quad(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def test_polygon_iou():
    assert polygon_iou(quad(0, 0, 10, 10), quad(0, 0, 10, 10)) == pytest.approx(1.0)
    assert polygon_iou(quad(0, 0, 10, 10), quad(5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert polygon_iou(quad(0, 0, 10, 10), quad(20, 20, 30, 30)) == 0.0
    flat = np.array([[0, 5], [50, 5], [50, 5], [0, 5]], dtype=np.float32)  # zero area, as rounding can give
    assert polygon_iou(flat, flat) == pytest.approx(1.0) and match_count([flat], [flat]) == 1
    bow_tie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=np.float32)  # self-intersecting: no crash
    assert 0.0 <= polygon_iou(bow_tie, quad(0, 0, 10, 10)) <= 1.0


def test_matching_is_one_to_one():
    truth = [quad(0, 0, 100, 20)]
    found = [quad(0, 0, 100, 20), quad(1, 0, 100, 20)]  # two detections of one line: one match
    assert match_count(found, truth) == 1
    assert match_count([quad(0, 0, 100, 20)], [quad(0, 0, 40, 20)]) == 0  # IoU 0.4 < 0.5


def test_hmean_pools_images():
    truth = [[quad(0, 0, 100, 20), quad(0, 40, 100, 60)], [quad(0, 0, 50, 20)]]
    found = [[quad(0, 0, 100, 20), quad(200, 200, 240, 220)], [quad(0, 0, 50, 20)]]
    score = detection_score(found, truth)
    assert (score.matched, score.found, score.truth) == (2, 3, 3)
    assert score.precision == pytest.approx(2 / 3) and score.recall == pytest.approx(2 / 3)
    assert score.hmean == pytest.approx(2 / 3)
    assert detection_score([[]], [[quad(0, 0, 1, 1)]]).hmean == 0.0
    with pytest.raises(ValueError):
        detection_score([[]], [])


def test_box_match_rate_counts_the_reference_boxes_reproduced():
    reference = [[quad(0, 0, 100, 20), quad(0, 40, 100, 60)], [quad(0, 0, 50, 20), quad(60, 0, 90, 20)]]
    shifted = [[quad(3, 1, 103, 21), quad(0, 40, 100, 60)], [quad(0, 0, 50, 20)]]
    assert box_match_rate(shifted, reference) == pytest.approx(3 / 4)
    assert box_match_rate(reference, reference) == 1.0
    assert box_match_rate([[quad(0, 0, 1, 1)]], [[]]) == 1.0
