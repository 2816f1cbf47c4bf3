"""precision=auto over HTTP: the service quantizes on its calibration set, runs the guard, says what it chose
in /readyz, and every response names the precision; a second start reuses the cached quantized model."""

from __future__ import annotations

import httpx
import pytest

from tests.detection_support import encode, render_lines

GUARD = {"precision": "auto", "guard_images": "3", "guard_real_images": "false", "calibration_images": "3",
         "textset_max_side": "480", "int8_methods": '["ort_qdq"]', "bucket_sides": "[320]"}


@pytest.fixture(scope="module")
def quantized_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("quantized")


def test_auto_precision_is_guarded_reported_and_cached(start_detection, quantized_cache):
    server = start_detection(**GUARD, quantized_cache_dir=str(quantized_cache))
    precision = server.readiness["precision"]
    assert precision["requested"] == "auto" and precision["guard_seconds"] > 0
    tried = {t["engine"]: t for t in precision["tried"]}
    assert tried["onnxruntime-fp32"]["accepted"] and tried["onnxruntime-fp32"]["match_rate"] == 1.0
    int8 = tried["onnxruntime-int8-ort_qdq"]
    assert int8["precision"] == "int8" and int8["build"]["quantization"]["cache_hit"] is False
    for trial in tried.values():
        assert {"hmean", "match_rate", "images_per_s", "accepted", "reason"} <= set(trial), trial
    served = precision["serving"]
    accepted = {t["precision"] for t in tried.values() if t["accepted"]}
    assert served in accepted and precision["engine"] in tried and tried[precision["engine"]]["accepted"]
    assert server.readiness["engine"]["engine"] == precision["engine"].split("-")[0]
    assert "precision guard" in server.log()

    image, _ = render_lines(3, 320, 224)
    r = httpx.post(f"{server.url}/v1/detect", files=[("images", ("a.png", encode(image), "image/png"))], timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["precision"] == served and r.json()["results"][0]["boxes"]

    again = start_detection(**GUARD, quantized_cache_dir=str(quantized_cache))
    int8_again = next(t for t in again.readiness["precision"]["tried"] if t["precision"] == "int8")
    assert int8_again["build"]["quantization"]["cache_hit"] is True
    assert int8_again["build"]["quantization"]["key"] == int8["build"]["quantization"]["key"]
