"""INT8 quantization on the calibration set (NNCF, ONNX Runtime QDQ), its on-disk cache, the OpenVINO engine, and
the guarded engine choice with real quantized engines."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.detection.engine_selection import guarded_engine
from services.detection.engines import create_engine
from services.detection.engines.onnx_engine import OnnxEngine
from services.detection.engines.openvino_engine import OpenVINOEngine, has_bf16
from services.detection.models import ResolvedModel
from services.detection.postprocess import PostprocessConfig
from services.detection.preprocess import NormalizeConfig, ResizeConfig, preprocess
from services.detection.quantize import CalibrationSpec, cache_key, quantize_cached
from services.detection.settings import DetectionSettings
from services.detection.textset import validation_set
from tests.detection_support import V4_PADDLE_DIR, V5_MOBILE_ONNX

RESIZE, NORM = ResizeConfig(960, "max"), NormalizeConfig()
V5 = ResolvedModel("PP-OCRv5_mobile_det", "PP-OCRv5_mobile_det", V5_MOBILE_ONNX, "onnx", "package")


def settings(tmp_path, **overrides) -> DetectionSettings:
    base = dict(cpu_threads=1, calibration_images=3, guard_images=3, guard_real_images=False, textset_max_side=480,
                int8_methods=["ort_qdq"], quantized_cache_dir=tmp_path / "quantized", data_dir=tmp_path)
    return DetectionSettings(_env_file=None, **(base | overrides))


def maps(engine, count: int = 2) -> list[np.ndarray]:
    return [engine.infer(preprocess(s.image, RESIZE, NORM)[None])[0] for s in validation_set(count, 480, False)]


def test_cache_key_follows_the_model_and_the_calibration_settings(tmp_path):
    spec = CalibrationSpec("nncf", images=8)
    assert cache_key(V5_MOBILE_ONNX, spec) == cache_key(V5_MOBILE_ONNX, CalibrationSpec("nncf", images=8))
    assert cache_key(V5_MOBILE_ONNX, spec) != cache_key(V5_MOBILE_ONNX, replace(spec, images=9))
    assert cache_key(V5_MOBILE_ONNX, spec) != cache_key(V5_MOBILE_ONNX, replace(spec, method="ort_qdq"))
    assert cache_key(V5_MOBILE_ONNX, spec) != cache_key(V5_MOBILE_ONNX, replace(spec, resize=ResizeConfig(640)))
    copy = tmp_path / "det.onnx"
    copy.write_bytes(V5_MOBILE_ONNX.read_bytes()[:-1] + b"\0")  # one byte differs
    assert cache_key(copy, spec) != cache_key(V5_MOBILE_ONNX, spec)


def test_openvino_fp32_reads_onnx_and_paddle_and_agrees_with_onnxruntime():
    s = DetectionSettings(_env_file=None, cpu_threads=2)
    ort_engine, ov_engine = OnnxEngine(V5_MOBILE_ONNX, s), OpenVINOEngine(V5_MOBILE_ONNX, s)
    ort_engine.load([], 1)
    ov_engine.load([], 1)
    for a, b in zip(maps(ort_engine), maps(ov_engine)):
        assert a.shape == b.shape and np.ptp(a) > 0.5
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_the_offline_default_on_openvino_gives_paddles_boxes():
    """PP-OCRv4 mobile det (the offline default) runs on OpenVINO on CPU: the same boxes as Paddle Inference."""
    from services.detection.engines.paddle_engine import PaddleEngine
    from services.detection.postprocess import DBPostProcessor
    from tests.detection_support import canonical

    s = DetectionSettings(_env_file=None, cpu_threads=2)
    paddle = ResolvedModel("PP-OCRv4_mobile_det", "PP-OCRv5_server_det", V4_PADDLE_DIR, "paddle", "fallback")
    v4 = create_engine(paddle, s)
    assert isinstance(v4, OpenVINOEngine)
    reference = PaddleEngine(V4_PADDLE_DIR, s)
    v4.load([], 1)
    reference.load([], 1)
    post = DBPostProcessor(PostprocessConfig())
    boxes = 0
    for sample in validation_set(3, 640, False):
        tensor = preprocess(sample.image, RESIZE, NORM)[None]
        a, b = v4.infer(tensor)[0], reference.infer(tensor)[0]
        np.testing.assert_allclose(a, b, atol=1e-3)
        want = sorted(canonical(x.points) for x in post(b, sample.image.shape[:2]))
        assert sorted(canonical(x.points) for x in post(a, sample.image.shape[:2])) == want
        boxes += len(want)
    assert boxes >= 6


def test_openvino_streams_run_side_by_side_with_the_same_maps():
    """Two CPU streams: two requests at once, each on half the threads, maps as one stream's."""
    from concurrent.futures import ThreadPoolExecutor

    one = OpenVINOEngine(V5_MOBILE_ONNX, DetectionSettings(_env_file=None, cpu_threads=2, openvino_streams=1))
    two = OpenVINOEngine(V5_MOBILE_ONNX, DetectionSettings(_env_file=None, cpu_threads=2, openvino_streams=2))
    one.load([], 1)
    two.load([], 1)
    assert (one.parallel, two.parallel) == (1, 2) and two.describe()["streams"] == 2
    assert two.compiled.get_property("NUM_STREAMS") == 2
    tensors = [preprocess(s.image, RESIZE, NORM)[None] for s in validation_set(4, 480, False)]
    with ThreadPoolExecutor(2) as pool:
        side_by_side = list(pool.map(lambda t: two.infer(t)[0], tensors))
    for tensor, got in zip(tensors, side_by_side):
        np.testing.assert_allclose(got, one.infer(tensor)[0], atol=1e-4)


@pytest.mark.skipif(not has_bf16(), reason="this CPU has no bf16")
def test_openvino_bf16_runs_in_bf16():
    engine = OpenVINOEngine(V5_MOBILE_ONNX, DetectionSettings(_env_file=None, cpu_threads=2), "bf16")
    engine.load([], 1)
    assert engine.describe()["inference_precision"] == "bf16" and np.ptp(maps(engine, 1)[0]) > 0.5


def test_nncf_int8_on_the_calibration_set(tmp_path):
    spec = CalibrationSpec("nncf", images=2, max_side=480, resize=RESIZE, normalize=NORM)
    quantized = quantize_cached(V5_MOBILE_ONNX, spec, tmp_path)
    assert not quantized.cache_hit and quantized.path.suffix == ".xml"
    engine = OpenVINOEngine(quantized.path, DetectionSettings(_env_file=None, cpu_threads=2), "int8")
    engine.load([], 1)
    import openvino as ov

    model = ov.Core().read_model(str(quantized.path))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    fp32 = OnnxEngine(V5_MOBILE_ONNX, DetectionSettings(_env_file=None, cpu_threads=2))
    fp32.load([], 1)
    for a, b in zip(maps(fp32), maps(engine)):
        assert np.mean(np.abs(a - b)) < 0.05  # int8, yet the same probability map to a few %


def test_quantized_model_is_cached_and_reused_on_a_second_start(tmp_path):
    s = settings(tmp_path, precision="int8")
    first = guarded_engine(V5, s, RESIZE, NORM, PostprocessConfig(), [])
    int8 = [t for t in first.trials if t.precision == "int8"]
    assert len(int8) == 1 and int8[0].hmean is not None and int8[0].match_rate is not None
    built = int8[0].build["quantization"]
    assert built["cache_hit"] is False and built["method"] == "ort_qdq" and built["calibration_images"] == 3
    cached = list((tmp_path / "quantized").glob("ort_qdq-*/model.onnx"))
    assert len(cached) == 1 and cached[0].stat().st_size > 0
    mtime = cached[0].stat().st_mtime_ns

    again = guarded_engine(V5, s, RESIZE, NORM, PostprocessConfig(), [])
    rebuilt = [t for t in again.trials if t.precision == "int8"][0].build["quantization"]
    assert rebuilt["cache_hit"] is True and rebuilt["key"] == built["key"] and rebuilt["seconds"] < built["seconds"]
    assert cached[0].stat().st_mtime_ns == mtime
    assert [t.hmean for t in again.trials] == [t.hmean for t in first.trials]  # same engines, same verdicts


def test_a_quantization_failure_is_never_fatal(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the cache folder's path is taken by a file, so quantization cannot write its model")
    s = settings(tmp_path, precision="int8", quantized_cache_dir=blocker)
    chosen = guarded_engine(V5, s, RESIZE, NORM, PostprocessConfig(), [])
    int8 = chosen.trials[1]
    assert int8.precision == "int8" and not int8.accepted and int8.reason.startswith("failed: ")
    assert chosen.precision in ("bf16", "fp32") and "instead of the requested int8" in chosen.reason
    assert np.ptp(chosen.engine.infer(preprocess(validation_set(1, 480, False)[0].image, RESIZE, NORM)[None])) > 0.5


def test_accuracy_control_reverts_costly_layers_to_float_and_keys_its_settings(tmp_path):
    from services.detection.accuracy_control import AccuracyControl
    import openvino as ov

    control = AccuracyControl(images=3, max_drop=0.0, max_iterations=1, ranking_images=1)
    spec = CalibrationSpec("nncf_ac", images=2, max_side=320, resize=RESIZE, normalize=NORM, accuracy=control)
    assert cache_key(V5_MOBILE_ONNX, spec) != cache_key(V5_MOBILE_ONNX, replace(spec, method="nncf"))
    assert cache_key(V5_MOBILE_ONNX, spec) != cache_key(V5_MOBILE_ONNX, replace(
        spec, accuracy=replace(control, max_drop=0.01)))
    assert cache_key(V5_MOBILE_ONNX, spec) != cache_key(V5_MOBILE_ONNX, replace(
        spec, postprocess=PostprocessConfig(box_thresh=0.5)))

    def fake_quantizers(path) -> int:
        return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(path)).get_ordered_ops())

    controlled = quantize_cached(V5_MOBILE_ONNX, spec, tmp_path).path
    plain = quantize_cached(V5_MOBILE_ONNX, replace(spec, method="nncf"), tmp_path).path
    assert controlled.parent.name.startswith("nncf_ac-") and controlled.suffix == ".xml"
    assert 0 < fake_quantizers(controlled) < fake_quantizers(plain)  # still int8, some layers back in float
