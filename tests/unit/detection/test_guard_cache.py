"""The precision guard's verdict cache: its key follows everything the verdict depends on; a second start with
the same key reuses the verdict without running the guard; a changed key or a corrupt file runs the guard again."""

from __future__ import annotations

import json

from services.detection import guard_cache
from services.detection.guard_process import isolated_guarded_engine
from services.detection.models import ResolvedModel
from services.detection.postprocess import PostprocessConfig
from services.detection.preprocess import NormalizeConfig, ResizeConfig
from services.detection.settings import DetectionSettings
from tests.detection_support import V5_MOBILE_ONNX

RESIZE, NORM, POST = ResizeConfig(960, "max"), NormalizeConfig(), PostprocessConfig()
V5 = ResolvedModel("PP-OCRv5_mobile_det", "PP-OCRv5_mobile_det", V5_MOBILE_ONNX, "onnx", "package")


def settings(tmp_path, **overrides) -> DetectionSettings:
    base = dict(cpu_threads=1, calibration_images=3, guard_images=3, guard_real_images=False,
                textset_max_side=480, int8_methods=["ort_qdq"], engine="onnxruntime", precision="auto",
                data_dir=tmp_path)
    return DetectionSettings(_env_file=None, **(base | overrides))


def key(s: DetectionSettings, model: ResolvedModel = V5) -> str:
    return guard_cache.verdict_key(guard_cache.key_parts(model, s, RESIZE, NORM, POST, []))


def guard(s: DetectionSettings):
    selection = isolated_guarded_engine(V5, s, RESIZE, NORM, POST, [])
    selection.engine.close()
    return selection


def test_the_key_follows_everything_the_verdict_depends_on(tmp_path):
    s = settings(tmp_path)
    assert key(s) == key(settings(tmp_path))
    parts = guard_cache.key_parts(V5, s, RESIZE, NORM, POST, [])
    assert {"openvino", "onnxruntime", "paddlepaddle"} <= set(parts["libraries"])
    assert parts["cpu"]["capabilities"] and "FP32" in parts["cpu"]["capabilities"]
    assert ["int8", "onnxruntime-int8-ort_qdq"] in parts["candidates"]
    assert set(parts["quantized_keys"]) == {"ort_qdq"}
    changed = [settings(tmp_path, guard_max_hmean_drop=0.01), settings(tmp_path, guard_min_match_rate=0.9),
               settings(tmp_path, guard_images=4), settings(tmp_path, guard_real_images=True),
               settings(tmp_path, textset_max_side=640), settings(tmp_path, calibration_images=4),
               settings(tmp_path, int8_methods=["nncf", "ort_qdq"]), settings(tmp_path, precision="int8"),
               settings(tmp_path, cpu_threads=2)]
    keys = {key(c) for c in changed}
    assert len(keys) == len(changed) and key(s) not in keys
    copy = tmp_path / "det.onnx"
    copy.write_bytes(V5_MOBILE_ONNX.read_bytes()[:-1] + b"\0")  # one byte differs
    assert key(s, ResolvedModel(V5.name, V5.requested, copy, "onnx", "package")) != key(s)


def test_a_second_start_reuses_the_verdict_and_a_corrupt_file_or_a_new_key_guards_again(tmp_path):
    s = settings(tmp_path)
    first = guard(s)
    assert first.guard["cached"] is False and first.seconds > 0
    path = tmp_path / "detection" / "guard" / f"{V5.name}-{key(s)}.json"
    assert first.guard["path"] == str(path) and json.loads(path.read_text())["label"] == first.label
    mtime = path.stat().st_mtime_ns

    second = guard(s)  # no guard process: the verdict, and the chosen engine built from the caches
    assert second.guard["cached"] is True and second.guard["measured_at"] == first.guard["measured_at"]
    assert (second.precision, second.label, second.trials, second.reason) == \
        (first.precision, first.label, first.trials, first.reason)
    assert second.seconds < first.seconds / 2 and path.stat().st_mtime_ns == mtime

    path.write_text('{"key": "' + key(s) + '", "trials": [')  # truncated: a crash mid-write, a bad disk
    third = guard(s)
    assert third.guard["cached"] is False and third.guard["measured_at"] > first.guard["measured_at"]
    assert third.precision in {t.precision for t in third.trials if t.accepted}
    assert guard_cache.load_verdict(path, key(s)) is not None  # written again, whole

    stricter = settings(tmp_path, guard_min_match_rate=0.5)  # one key component changes: the guard runs again
    fourth = guard(stricter)
    assert fourth.guard["cached"] is False and fourth.guard["key"] == key(stricter) != key(s)
    assert len(list(path.parent.glob("*.json"))) == 2
    other = path.with_name(f"{V5.name}-{key(stricter)}.json")
    assert guard_cache.load_verdict(other, key(s)) is None  # stored for another key


def test_an_unusable_verdict_file_is_ignored(tmp_path):
    s = settings(tmp_path)
    path = tmp_path / "v.json"
    for content in (b"\xff\xfe not json", b"{}", b'{"key": 3}'):
        path.write_bytes(content)
        assert guard_cache.load_verdict(path, key(s)) is None
    assert guard_cache.load_verdict(tmp_path / "absent.json", key(s)) is None
