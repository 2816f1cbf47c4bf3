"""TensorRT made real without a GPU: the shape profiles the batcher's buckets call for, the options Paddle and
ONNX Runtime receive, INT8 calibration tables from the calibration set, and an engine for every shape the
batcher can produce (the padded-bucket KeyError for images larger than the largest bucket)."""

import json

import numpy as np
import pytest

from services.detection.batcher import all_buckets, bucket_for
from services.detection.engines.onnx_engine import select_providers
from services.detection.engines.paddle_engine import PaddleEngine, calibration_inputs, config_calls
from services.detection.engines.tensorrt import (
    Profile,
    engine_key,
    ort_tensorrt_provider,
    ort_trt_options,
    overflow_cap,
    trt_profiles,
    write_ort_calibration_table,
)
from services.detection.preprocess import NormalizeConfig, ResizeConfig, resized_shape
from services.detection.settings import DetectionSettings
from services.detection.textset import calibration_batches
from tests.detection_support import V4_PADDLE_DIR, V5_MOBILE_ONNX

SIDES = [320, 640, 960]
GRID = all_buckets(SIDES)


def gpu_settings(tmp_path, **kw) -> DetectionSettings:
    return DetectionSettings(_env_file=None, device="gpu", use_tensorrt=True, trt_cache_dir=tmp_path, **kw)


@pytest.fixture(scope="module")
def calibration() -> list[np.ndarray]:
    """Three rendered calibration images (small, to keep the test quick), preprocessed as served."""
    return list(calibration_batches(ResizeConfig(256), NormalizeConfig(), 3, 256))


def test_profiles_from_the_buckets():
    padded = trt_profiles(GRID, 8, 4000, padded=True)
    assert padded[(320, 640)] == Profile((1, 3, 320, 640), (8, 3, 320, 640), (8, 3, 320, 640))
    assert set(padded) == set(GRID) | {None}
    assert padded[None] == Profile((1, 3, 320, 320), (1, 3, 960, 960), (8, 3, 4096, 4096))
    (exact,) = trt_profiles(GRID, 8, 4000, padded=False).values()
    assert exact == Profile((1, 3, 32, 32), (8, 3, 960, 960), (8, 3, 4096, 4096))
    assert overflow_cap(4000) == 4096 and overflow_cap(960) == 1024


@pytest.mark.parametrize("limit_type", ["max", "min"])
def test_every_shape_the_batcher_can_produce_has_an_engine_that_covers_it(limit_type):
    """Images larger than the largest bucket used to find no padded-bucket engine (KeyError)."""
    profiles = trt_profiles(GRID, 8, 4000, padded=True)
    resize = ResizeConfig(960, limit_type, 4000)
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(8, 9000, size=(400, 2))] + [(8000, 30), (30, 8000)]
    beyond = 0  # shapes served by the overflow engine
    for h, w in sizes:
        shape = bucket_for(*resized_shape(h, w, resize), SIDES)
        key = engine_key(shape, profiles)
        assert key in profiles
        for n in (1, 8):
            assert profiles[key].covers((n, 3, *shape)), (h, w, shape, key)
        beyond += key is None
    if limit_type == "min":  # short side to 960: long sides beyond the largest bucket, up to max_side_limit
        assert beyond > 100
    else:  # long side to 960: every shape has its bucket
        assert beyond == 0


class _Predictor:
    def __init__(self, key):
        self.key = key

    def clone(self):
        return _Predictor(self.key)


def test_padded_engine_serves_shapes_beyond_the_largest_bucket(tmp_path, monkeypatch):
    """The real PaddleEngine.load/_predictor with a stand-in for paddle.inference.create_predictor (a GPU build
    is needed to create TensorRT predictors): one predictor per bucket plus the overflow one, all keys used."""
    built = []

    def build_config(folder, settings, bucket, max_batch_size, profile):
        built.append((bucket, profile))
        return bucket

    monkeypatch.setattr("services.detection.engines.paddle_engine.build_config", build_config)
    monkeypatch.setattr("paddle.inference.create_predictor", _Predictor)
    engine = PaddleEngine(V4_PADDLE_DIR, gpu_settings(tmp_path, bucket_mode="padded"))
    engine.load([(320, 320), (320, 640)], 8)
    assert [b for b, _ in built] == [(320, 320), (320, 640), None]
    assert built[2][1].max == (8, 3, 4096, 4096)
    assert engine._predictor((320, 640)).key == (320, 640)
    assert engine._predictor((1024, 320)).key is None  # was KeyError
    assert engine._predictor((512, 1280)).key is None


def test_paddle_tensorrt_config_calls(tmp_path):
    s = gpu_settings(tmp_path, gpu_id=1, trt_precision="fp16", trt_min_subgraph_size=5)
    program = V4_PADDLE_DIR / "inference.pdmodel"
    calls = {name: (args, kw) for name, args, kw in config_calls(program, s, (640, 960), 8)}
    assert calls["enable_use_gpu"][0] == (256, 1)
    assert "disable_gpu" not in calls and "enable_mkldnn" not in calls
    trt = calls["enable_tensorrt_engine"][1]
    assert trt["precision_mode"] == "Half" and trt["max_batch_size"] == 8 and trt["min_subgraph_size"] == 5
    assert trt["use_static"] is True and trt["use_calib_mode"] is False
    # Paddle's order: min, max, opt
    assert calls["set_trt_dynamic_shape_info"][0] == (
        {"x": [1, 3, 640, 960]}, {"x": [8, 3, 640, 960]}, {"x": [8, 3, 640, 960]})
    assert calls["set_optim_cache_dir"][0][0].endswith("ch_PP-OCRv4_det_infer_fp16_b8_640x960")
    exact = trt_profiles(GRID, 8, 4000, padded=False)[None]
    wide = {n: a for n, a, _ in config_calls(program, s, None, 8, exact)}
    assert wide["set_trt_dynamic_shape_info"] == ({"x": [1, 3, 32, 32]}, {"x": [8, 3, 4096, 4096]},
                                                  {"x": [8, 3, 960, 960]})
    int8 = {n: kw for n, _, kw in config_calls(program, s.model_copy(update={"trt_precision": "int8"}), (32, 32), 1)}
    assert int8["enable_tensorrt_engine"]["use_calib_mode"] is True


def test_paddle_int8_calibration_inputs_are_real_images(tmp_path, calibration):
    s = gpu_settings(tmp_path, trt_precision="int8")
    profiles = trt_profiles([(320, 320)], 8, 4000, padded=True)
    static = calibration_inputs(s, (320, 320), profiles[(320, 320)], calibration)
    assert [b.shape for b in static] == [(1, 3, 320, 320)] * 3
    assert all(b[:, :, :256, :256].std() > 0.1 for b in static)  # images, not warm-up zeros
    assert all(not b[:, :, 256:, :].any() for b in static)  # padded as the batcher pads
    overflow = calibration_inputs(s, None, profiles[None], calibration)
    assert [b.shape for b in overflow] == [(1, 3, 320, 320)] * 3  # padded up into the overflow engine's range
    exact = trt_profiles([(320, 320)], 8, 4000, padded=False)[None]
    assert [b.shape for b in calibration_inputs(s, None, exact, calibration)] == [b.shape for b in calibration]


def test_ort_tensorrt_options(tmp_path):
    profiles = list(trt_profiles([(320, 320), (320, 640)], 4, 960, padded=True).values())
    o = ort_trt_options(device_id=0, precision="fp16", cache_dir=tmp_path, min_subgraph_size=3,
                        workspace_bytes=1 << 30, input_name="x", profiles=profiles)
    assert o["trt_profile_min_shapes"] == "x:1x3x320x320,x:1x3x320x640,x:1x3x320x320"
    assert o["trt_profile_opt_shapes"] == "x:4x3x320x320,x:4x3x320x640,x:1x3x640x640"
    assert o["trt_profile_max_shapes"] == "x:4x3x320x320,x:4x3x320x640,x:4x3x1024x1024"
    assert o["trt_fp16_enable"] and not o["trt_int8_enable"] and o["trt_engine_cache_path"] == str(tmp_path)
    with pytest.raises(ValueError, match="calibration table"):
        ort_trt_options(device_id=0, precision="int8", cache_dir=tmp_path, min_subgraph_size=3,
                        workspace_bytes=1 << 30, input_name="x", profiles=profiles)


def test_ort_int8_calibration_table_from_the_calibration_set(tmp_path, calibration):
    """onnxruntime's own calibrator on the real model and rendered images: every tensor gets a range, and the
    input's range is that of normalised images (zeros would give an empty one)."""
    table = write_ort_calibration_table(V5_MOBILE_ONNX, calibration, tmp_path)
    assert table.name == "calibration.flatbuffers" and table.stat().st_size > 1000
    ranges = json.loads((tmp_path / "calibration.json").read_text())
    assert len(ranges) > 100
    low, high = ranges["x"]["lowest"]["data"][0], ranges["x"]["highest"]["data"][0]
    assert -2.2 < low < -1.0 and 1.5 < high < 2.7  # (0 - mean) / std .. (1 - mean) / std over real pixels
    assert (tmp_path / "calibration.cache").is_file()


def test_onnxruntime_tensorrt_provider_is_built_from_buckets_and_calibration(tmp_path, calibration):
    s = gpu_settings(tmp_path, trt_precision="int8", bucket_mode="padded")
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = select_providers(everything, s, lambda: ort_tensorrt_provider(
        V5_MOBILE_ONNX, s, "x", [(320, 320)], 2, calibration))
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == everything
    options = providers[0][1]
    assert options["trt_int8_enable"] and options["trt_int8_calibration_table_name"] == "calibration.flatbuffers"
    cache = options["trt_engine_cache_path"]
    assert (tmp_path / cache.split("/")[-1] / "calibration.flatbuffers").is_file()
    assert options["trt_profile_max_shapes"] == "x:2x3x320x320,x:2x3x4096x4096"
    # fp16 needs no table; without the TensorRT provider in the build, CUDA then CPU
    fp16 = s.model_copy(update={"trt_precision": "fp16"})
    assert "trt_int8_calibration_table_name" not in ort_tensorrt_provider(V5_MOBILE_ONNX, fp16, "x", [], 1)[1]
    cuda_only = DetectionSettings(_env_file=None, device="gpu")
    assert [p[0] if isinstance(p, tuple) else p for p in select_providers(everything, cuda_only)] == everything[1:]
    assert select_providers(everything, DetectionSettings(_env_file=None)) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        select_providers(["CPUExecutionProvider"], cuda_only)
