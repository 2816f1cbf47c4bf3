import numpy as np
import pytest
from rapidocr.ch_ppocr_det.utils import DetPreProcess

from services.detection.preprocess import NormalizeConfig, ResizeConfig, normalize, preprocess, resized_shape


@pytest.mark.parametrize(
    ("hw", "cfg", "expected"),
    [
        ((100, 200), ResizeConfig(960, "max"), (96, 192)),  # no scaling, rounded to 32
        ((2000, 1000), ResizeConfig(960, "max"), (960, 480)),
        ((100, 200), ResizeConfig(736, "min"), (736, 1472)),
        ((100, 200), ResizeConfig(960, "resize_long"), (480, 960)),
        ((1, 1), ResizeConfig(960, "max"), (32, 32)),  # never below 32
        ((100, 20000), ResizeConfig(736, "min"), (32, 4000)),  # capped at max_side_limit
        ((48, 48), ResizeConfig(64, "min"), (64, 64)),
        ((16, 48), ResizeConfig(960, "max"), (32, 64)),  # round(0.5) == 0 -> 32 at least; round(1.5) == 2
    ],
)
def test_resized_shape(hw, cfg, expected):
    assert resized_shape(*hw, cfg) == expected


@pytest.mark.parametrize("limit_type", ["min", "max"])
@pytest.mark.parametrize("hw", [(37, 501), (480, 640), (1234, 777), (96, 96), (700, 90)])
def test_resize_matches_rapidocr(limit_type, hw):
    side = 736 if limit_type == "min" else 640
    ref = DetPreProcess(limit_side_len=side, limit_type=limit_type).resize(np.zeros((*hw, 3), np.uint8))
    assert resized_shape(*hw, ResizeConfig(side, limit_type, max_side_limit=100_000)) == ref.shape[:2]


def test_normalize_is_imagenet_bgr_chw():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = normalize(image, NormalizeConfig())
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((image / 255.0 - mean) / std).transpose(2, 0, 1)
    assert out.dtype == np.float32 and out.shape == (3, 5, 7)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_normalize_gives_the_whole_array_formulas_float32_values_exactly():
    image = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    cfg = NormalizeConfig()
    mean, std = np.float32(cfg.mean).reshape(1, 1, 3), np.float32(cfg.std).reshape(1, 1, 3)
    expected = ((image.astype(np.float32) * np.float32(cfg.scale) - mean) / std).transpose(2, 0, 1)
    out = normalize(image, cfg)
    assert out.flags["C_CONTIGUOUS"] and np.array_equal(out, expected)  # bit for bit: fp32 stays exact


def test_mean_colour_normalises_to_zero_the_batch_padding_value():
    mean_pixel = np.round(np.array(NormalizeConfig().mean) * 255).astype(np.uint8).reshape(1, 1, 3)
    assert np.abs(normalize(mean_pixel, NormalizeConfig())).max() < 0.01


def test_preprocess_shape():
    out = preprocess(np.zeros((100, 300, 3), np.uint8), ResizeConfig(960, "max"), NormalizeConfig())
    assert out.shape == (3, 96, 288) and out.flags["C_CONTIGUOUS"]


def test_bad_resize_config():
    with pytest.raises(ValueError, match="limit_type"):
        ResizeConfig(960, "sideways")
