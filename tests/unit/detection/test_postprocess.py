"""Post-processing parity against RapidOCR's DBPostProcess (an oracle nobody here wrote) on the same maps."""

import cv2
import numpy as np
import pytest
import skimage.data
from rapidocr.ch_ppocr_det.utils import DBPostProcess as RapidDBPostProcess

from services.detection.engines.onnx_engine import OnnxEngine
from services.detection.postprocess import DBPostProcessor, PostprocessConfig
from services.detection.preprocess import NormalizeConfig, ResizeConfig, preprocess
from services.detection.settings import DetectionSettings
from tests.detection_support import V5_MOBILE_ONNX, canonical, render_lines


@pytest.fixture(scope="module")
def prob_maps():
    """Real probability maps: PP-OCRv5 mobile det on rendered lines and scikit-image photographs."""
    engine = OnnxEngine(V5_MOBILE_ONNX, DetectionSettings(_env_file=None))
    engine.load([], 1)
    images = [render_lines(seed)[0] for seed in range(3)]
    images += [cv2.cvtColor(skimage.data.page(), cv2.COLOR_GRAY2BGR), cv2.cvtColor(skimage.data.text(), cv2.COLOR_GRAY2BGR)]
    maps = []
    for image, resize in zip(images, [ResizeConfig(960, "max")] * 3 + [ResizeConfig(960, "resize_long"),
                                                                         ResizeConfig(736, "min")]):
        maps.append((engine.infer(preprocess(image, resize, NormalizeConfig())[None])[0], image.shape[:2]))
    rng = np.random.default_rng(1)  # plus a noisy synthetic map with rotated blobs
    synthetic = cv2.GaussianBlur(rng.random((256, 320)).astype(np.float32), (0, 0), 6)
    synthetic = (synthetic - synthetic.min()) / np.ptp(synthetic)
    for angle in (0, 30, 80):
        rect = ((160, 128), (200, 24), angle)
        cv2.fillPoly(synthetic, [cv2.boxPoints(rect).astype(np.int32)], 0.95)
    maps.append((synthetic, (500, 777)))
    return maps


def reference(prob, src_hw, **kw):
    boxes, scores = RapidDBPostProcess(**kw)(prob[None, None], src_hw)
    return boxes, scores


@pytest.mark.parametrize(
    "kw",
    [
        dict(thresh=0.3, box_thresh=0.6, unclip_ratio=1.5, score_mode="fast", use_dilation=False),
        dict(thresh=0.3, box_thresh=0.5, unclip_ratio=1.6, score_mode="fast", use_dilation=True),
        dict(thresh=0.2, box_thresh=0.3, unclip_ratio=2.0, score_mode="slow", use_dilation=False),
        dict(thresh=0.5, box_thresh=0.7, unclip_ratio=1.2, score_mode="slow", use_dilation=True),
    ],
)
def test_quads_match_rapidocr(prob_maps, kw):
    ours = DBPostProcessor(PostprocessConfig(box_type="quad", max_candidates=1000, **kw))
    total = 0
    for prob, src_hw in prob_maps:
        ref_boxes, ref_scores = reference(prob, src_hw, max_candidates=1000, **kw)
        got = ours(prob, src_hw)
        assert sorted(canonical(b) for b in ref_boxes) == sorted(canonical(b.points) for b in got)
        np.testing.assert_allclose(sorted(ref_scores), sorted(b.score for b in got), rtol=1e-9)
        total += len(got)
    assert total > 20  # the comparison covered real boxes


def test_quads_are_clockwise_from_top_left(prob_maps):
    for prob, src_hw in prob_maps:
        for box in DBPostProcessor(PostprocessConfig())(prob, src_hw):
            tl, tr, br, bl = box.points
            assert tl[0] <= tr[0] and bl[0] <= br[0] and tl[1] <= bl[1] and tr[1] <= br[1]
            assert (box.points >= 0).all() and (box.points[:, 0] < src_hw[1]).all() and (box.points[:, 1] < src_hw[0]).all()


def test_poly_boxes_cover_the_quads(prob_maps):
    prob, src_hw = prob_maps[0]
    quads = DBPostProcessor(PostprocessConfig(box_type="quad"))(prob, src_hw)
    polys = DBPostProcessor(PostprocessConfig(box_type="poly"))(prob, src_hw)
    assert len(polys) == len(quads) and all(len(p.points) >= 4 for p in polys)
    for q in quads:
        cx, cy = q.points.mean(axis=0)
        assert any(cv2.pointPolygonTest(p.points.astype(np.float32), (float(cx), float(cy)), False) >= 0
                   for p in polys)


def test_max_candidates_limits_contours(prob_maps):
    prob, src_hw = prob_maps[3]
    assert len(DBPostProcessor(PostprocessConfig(max_candidates=2))(prob, src_hw)) <= 2


def test_empty_map_has_no_boxes():
    assert DBPostProcessor(PostprocessConfig())(np.zeros((64, 64), np.float32), (10, 10)) == []


@pytest.mark.parametrize(
    "bad", [dict(thresh=1.5), dict(box_thresh=-0.1), dict(unclip_ratio=0), dict(score_mode="mean"),
            dict(box_type="circle"), dict(max_candidates=0)],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        PostprocessConfig(**bad)
