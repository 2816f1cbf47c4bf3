import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.detection.engines import create_engine
from services.detection.engines.onnx_engine import OnnxEngine
from services.detection.engines.paddle_engine import PaddleEngine, build_config, config_calls
from services.detection.models import ResolvedModel
from services.detection.postprocess import DBPostProcessor, PostprocessConfig
from services.detection.preprocess import NormalizeConfig, ResizeConfig, preprocess
from services.detection.settings import DetectionSettings
from tests.detection_support import V4_PADDLE_DIR, V5_MOBILE_ONNX, canonical, render_lines

CPU = DetectionSettings(_env_file=None, cpu_threads=1)


def rendered_batch(n: int = 2) -> np.ndarray:
    return np.stack([preprocess(render_lines(i, 320, 224)[0], ResizeConfig(), NormalizeConfig()) for i in range(n)])


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """The same small network, with the same weights, as a Paddle model (a PIR .json program, the format PaddleX
    ships PP-OCRv5 in) and as an ONNX model."""
    out = tmp_path_factory.mktemp("twins")
    subprocess.run([sys.executable, str(Path(__file__).with_name("twin_models.py")), str(out)], check=True,
                   capture_output=True)
    assert (out / "paddle" / "inference.json").is_file()
    return out


def test_paddle_and_onnxruntime_agree_on_the_same_model(twins):
    batch = rendered_batch(3)
    paddle_engine, onnx_engine = PaddleEngine(twins / "paddle", CPU), OnnxEngine(twins / "twin.onnx", CPU)
    paddle_engine.load([], 4)
    onnx_engine.load([], 4)
    a, b = paddle_engine.infer(batch), onnx_engine.infer(batch)
    assert a.shape == b.shape == (3, 224, 320)
    assert np.ptp(a) > 0.5  # not a constant map
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture(scope="module")
def v4_onnx(tmp_path_factory) -> Path:
    """PP-OCRv4 mobile det's own Paddle program and weights, translated op by op to ONNX (paddle_to_onnx.py)."""
    out = tmp_path_factory.mktemp("v4") / "ch_PP-OCRv4_det.onnx"
    subprocess.run([sys.executable, str(Path(__file__).with_name("paddle_to_onnx.py")), str(V4_PADDLE_DIR), str(out)],
                   check=True, capture_output=True, env={**os.environ, "FLAGS_enable_pir_api": "0"})
    return out


def test_paddle_and_onnxruntime_agree_on_pp_ocrv4(v4_onnx):
    import cv2
    import skimage.data

    paddle_engine, onnx_engine = PaddleEngine(V4_PADDLE_DIR, CPU), OnnxEngine(v4_onnx, CPU)
    paddle_engine.load([], 4)
    onnx_engine.load([], 4)
    post = DBPostProcessor(PostprocessConfig())
    images = [render_lines(seed, 480, 320)[0] for seed in range(3)]
    images.append(cv2.cvtColor(skimage.data.page(), cv2.COLOR_GRAY2BGR))
    found = 0
    for image in images:
        batch = preprocess(image, ResizeConfig(960, "resize_long"), NormalizeConfig())[None]
        a, b = paddle_engine.infer(batch)[0], onnx_engine.infer(batch)[0]
        np.testing.assert_allclose(a, b, atol=2e-4)
        boxes_a, boxes_b = post(a, image.shape[:2]), post(b, image.shape[:2])
        assert [canonical(x.points) for x in boxes_a] == [canonical(x.points) for x in boxes_b]
        found += len(boxes_a)
    assert found >= 15


def test_paddle_engine_on_pp_ocrv4(tmp_path):
    engine = PaddleEngine(V4_PADDLE_DIR, CPU)
    engine.load([], 2)
    probs = engine.infer(rendered_batch(2))
    assert probs.shape == (2, 224, 320) and probs.dtype == np.float32
    assert 0 <= probs.min() and probs.max() <= 1 and probs.max() > 0.9  # finds text


def test_paddle_predictor_per_thread():
    engine = PaddleEngine(V4_PADDLE_DIR, CPU)
    engine.load([], 1)
    batch = rendered_batch(1)
    expected = engine.infer(batch)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: (engine.infer(batch), id(engine._local.predictors[None])), range(6)))
    for probs, _ in results:
        np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert len(engine._masters) == 1


def test_onnx_engine_on_pp_ocrv5():
    engine = OnnxEngine(V5_MOBILE_ONNX, CPU)
    engine.load([], 2)
    probs = engine.infer(rendered_batch(2))
    assert probs.shape == (2, 224, 320) and probs.max() > 0.9
    assert engine.describe()["providers"] == ["CPUExecutionProvider"]


def test_cpu_paddle_config():
    config = build_config(V4_PADDLE_DIR, DetectionSettings(_env_file=None, cpu_threads=2))
    assert config.mkldnn_enabled() and not config.use_gpu() and not config.new_ir_enabled()
    assert config.cpu_math_library_num_threads() == 2


def test_gpu_paddle_config_without_tensorrt():
    calls = [n for n, _, _ in config_calls(V4_PADDLE_DIR / "inference.json", DetectionSettings(_env_file=None, device="gpu"))]
    assert "enable_use_gpu" in calls and "enable_tensorrt_engine" not in calls and "enable_new_ir" not in calls


def test_torch_engine_on_cpu_with_the_rapidocr_network():
    s = DetectionSettings(_env_file=None, engine="torch", torch_random_weights=True, cpu_threads=1)
    model = ResolvedModel("PP-OCRv5_mobile_det", "PP-OCRv5_mobile_det", V5_MOBILE_ONNX, "onnx", "package")
    engine = create_engine(model, s)
    engine.load([], 2)
    probs = engine.infer(np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32))
    assert probs.shape == (2, 64, 96) and 0 <= probs.min() and probs.max() <= 1
    assert engine.describe()["architecture"] == "ch_PP-OCRv5_det_mobile"


def test_torch_engine_refuses_to_run_untrained_by_accident():
    model = ResolvedModel("PP-OCRv5_mobile_det", "x", V5_MOBILE_ONNX, "onnx", "package")
    engine = create_engine(model, DetectionSettings(_env_file=None, engine="torch"))
    with pytest.raises(ValueError, match="torch_random_weights"):
        engine.load([], 1)


def test_engine_and_model_format_must_match():
    onnx_model = ResolvedModel("m", "m", V5_MOBILE_ONNX, "onnx", "package")
    with pytest.raises(ValueError, match="Paddle model folder"):
        create_engine(onnx_model, DetectionSettings(_env_file=None, engine="paddle"))
    assert isinstance(create_engine(onnx_model, DetectionSettings(_env_file=None)), OnnxEngine)
    paddle_model = ResolvedModel("m", "m", V4_PADDLE_DIR, "paddle", "package")
    from services.detection.engines.openvino_engine import OpenVINOEngine

    # engine=auto: OpenVINO runs .pdmodel programs on CPU; Paddle Inference stays the GPU runtime
    assert isinstance(create_engine(paddle_model, DetectionSettings(_env_file=None)), OpenVINOEngine)
    assert isinstance(create_engine(paddle_model, DetectionSettings(_env_file=None, device="gpu")), PaddleEngine)
    with pytest.raises(ValueError, match=".onnx"):
        create_engine(paddle_model, DetectionSettings(_env_file=None, engine="onnxruntime"))


@pytest.mark.gpu
def test_torch_engine_cuda_fp16():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    s = DetectionSettings(_env_file=None, engine="torch", device="gpu", torch_random_weights=True)
    model = ResolvedModel("PP-OCRv5_server_det", "x", V5_MOBILE_ONNX, "onnx", "package")
    engine = create_engine(model, s)
    engine.load([], 4)
    assert engine.infer(np.zeros((4, 3, 320, 320), np.float32)).shape == (4, 320, 320)


def test_json_programs_run_without_onednn_on_cpu():
    names = [n for n, _, _ in config_calls(Path("m/inference.json"), CPU)]
    assert "disable_mkldnn" in names and "enable_mkldnn" not in names and "enable_new_ir" not in names


def test_padding_changes_pp_ocr_maps_everywhere_which_is_why_exact_buckets_are_the_default():
    """PP-OCR det nets use squeeze-excitation (global pooling): zero padding shifts the whole map, not its edge."""
    engine = OnnxEngine(V5_MOBILE_ONNX, CPU)
    engine.load([], 1)
    single = rendered_batch(1)  # 224 x 320
    padded = np.zeros((1, 3, 320, 320), np.float32)
    padded[:, :, :224, :320] = single
    a, b = engine.infer(single)[0], engine.infer(padded)[0, :224, :320]
    assert np.abs(a[:100, :100] - b[:100, :100]).max() > 1e-3  # far from the padded border
