"""precision=auto over HTTP: the service quantizes on its calibration set, runs the guard, says what it chose
in /readyz, and every response names the precision; a second start reuses the guard's cached verdict, and with
the verdict cache off, the cached quantized model."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.detection_support import encode, render_lines

GUARD = {"precision": "auto", "guard_images": "3", "guard_real_images": "false", "calibration_images": "3",
         "textset_max_side": "480", "int8_methods": '["ort_qdq"]', "bucket_sides": "[320]"}


@pytest.fixture(scope="module")
def quantized_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache") / "quantized"  # its own folder: the guard's verdicts go beside it


def test_auto_precision_is_guarded_reported_and_cached(start_detection, quantized_cache):
    started = time.monotonic()
    server = start_detection(**GUARD, quantized_cache_dir=str(quantized_cache))
    first_start = time.monotonic() - started
    precision = server.readiness["precision"]
    assert precision["requested"] == "auto" and precision["guard_seconds"] > 0
    assert precision["guard"]["cached"] is False and precision["guard"]["measured_at"]
    assert "[guard]" in server.log()  # the guard's child process ran (its log lines carry the tag)
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

    # the same settings: the verdict comes from the cache, no guard process runs, the start is shorter
    started = time.monotonic()
    cached = start_detection(**GUARD, quantized_cache_dir=str(quantized_cache))
    cached_start = time.monotonic() - started
    reused = cached.readiness["precision"]
    assert reused["guard"]["cached"] is True and reused["guard"]["measured_at"] == precision["guard"]["measured_at"]
    assert reused["guard"]["key"] == precision["guard"]["key"]
    assert reused["serving"] == served and reused["engine"] == precision["engine"]
    assert reused["tried"] == precision["tried"]  # hmean, match rate, images/s as measured
    assert "[guard]" not in cached.log() and "verdict from the cache" in cached.log()
    assert reused["guard_seconds"] < precision["guard_seconds"] and cached_start < first_start, (cached_start,
                                                                                                first_start)
    r = httpx.post(f"{cached.url}/v1/detect", files=[("images", ("a.png", encode(image), "image/png"))], timeout=60)
    assert r.status_code == 200 and r.json()["precision"] == served and r.json()["results"][0]["boxes"]

    # the verdict cache off: the guard runs again, on the cached quantized model
    again = start_detection(**GUARD, quantized_cache_dir=str(quantized_cache), guard_cache="false")
    assert again.readiness["precision"]["guard"]["cached"] is False and "[guard]" in again.log()
    int8_again = next(t for t in again.readiness["precision"]["tried"] if t["precision"] == "int8")
    assert int8_again["build"]["quantization"]["cache_hit"] is True
    assert int8_again["build"]["quantization"]["key"] == int8["build"]["quantization"]["key"]
