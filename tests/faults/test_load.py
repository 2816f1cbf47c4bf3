"""A bounded locust run against /detect through the gateway: no errors, and the detection process's memory
bounded (peak RSS <= 600 MB) and not growing with the number of distinct image shapes.

Two detection services: the session's exact fp32 one (ONNX Runtime), and one as deployed by default (engine and
precision `auto`: the offline default model on OpenVINO, at the reduced precision the guard accepts; a small
guard here). OpenVINO's CPU plugin caches compiled primitives per input shape, which is where memory grew with
shapes until `DETBOOTH_DETECTION_OPENVINO_CACHE_CAPACITY` bounded it (bench/detect_memory.py).

The issue's 10,000 requests run with `bench/load_detect.py --requests 10000` (minutes on 2 shared cores);
here a smaller bounded run: a warm-up pass over more sizes than the engines' shape caches hold (at the
measured pass's concurrency, so its batch sizes too), then a measured pass over sizes it has not seen (another
seed): once the bounded caches are full, new shapes must not cost new memory.
"""

from types import SimpleNamespace

import pytest

from bench.load_detect import run
from services.detection.settings import DetectionSettings

pytestmark = pytest.mark.slow

RSS_LIMIT_MB = 600
GROWTH_LIMIT_MB = 64
WARM_SHAPES = 48  # x the batch sizes seen: more input shapes than OpenVINO's default cache keeps
DEFAULT_PRECISION = {"engine": "auto", "precision": "auto", "int8_methods": '["nncf"]', "calibration_images": "3",
                     "guard_images": "3", "guard_real_images": "false", "textset_max_side": "480",
                     "bucket_sides": "[320]",
                     "max_batch_size": str(DetectionSettings(_env_file=None).max_batch_size)}  # the CPU default


@pytest.fixture(scope="module")
def default_precision_stack(full_stack, logs_dir, tmp_path_factory):
    """A gateway (no worker) on a detection service with the default engine and precision choice."""
    from tests.integration.detection.conftest import DetectionServer, service_env
    from tests.procs import start_stack

    tmp = tmp_path_factory.mktemp("detection-default-precision")
    detection = DetectionServer(service_env(tmp, **DEFAULT_PRECISION), tmp / "service.log")
    try:
        detection.readiness = detection.wait_ready()
        stack = start_stack({**full_stack.env, "DETBOOTH_DETECTION_URL": detection.url}, logs_dir, worker=False)
    except BaseException:
        detection.stop()
        raise
    yield SimpleNamespace(url=stack.url, gateway=stack.gateway, detection=detection)
    stack.stop()
    detection.stop()


@pytest.fixture(params=["fp32-onnxruntime", "default-openvino"])
def load_stack(request):
    if request.param == "fp32-onnxruntime":
        return request.getfixturevalue("full_stack")
    stack = request.getfixturevalue("default_precision_stack")
    assert stack.detection.readiness["engine"]["engine"] == "openvino", stack.detection.readiness["engine"]
    return stack


@pytest.mark.fault(f"load: locust on /detect, {WARM_SHAPES} + 16 distinct image shapes, fp32 and the default precision",
                   f"0 errors; detection peak RSS <= {RSS_LIMIT_MB} MB; RSS growth over 16 unseen shapes "
                   f"< {GROWTH_LIMIT_MB} MB")
def test_detect_under_load(load_stack, fault_note):
    pids = {"gateway": load_stack.gateway.pid, "detection": load_stack.detection.proc.pid}
    serving = load_stack.detection.readiness["precision"]["engine"]
    warm = run(load_stack.url, "key-alice", 240, 8, pids, timeout_s=90, shapes=WARM_SHAPES, seed=1, max_side=700)
    assert warm["failures"] == 0, warm
    res = run(load_stack.url, "key-alice", 200, 8, pids, timeout_s=90, shapes=16, seed=2, max_side=700)
    # locust stops at the count, cutting the requests in flight short of it
    assert res["requests"] >= 160 and res["failures"] == 0, res
    fault_note(f"{serving}: {res['requests']} req, {res['rps']} req/s, p50 {res['p50_ms']:.0f} ms, p99 "
               f"{res['p99_ms']:.0f} ms, errors {res['error_rate']:.1%}, RSS MB start {warm['rss_mb_before']}, "
               f"after warm-up {warm['rss_mb_after']}, after {res['rss_mb_after']}, peak {res['rss_mb_peak']}")
    peak = max(warm["rss_mb_peak"]["detection"], res["rss_mb_peak"]["detection"])
    assert peak <= RSS_LIMIT_MB, f"{serving}: detection peaked at {peak} MB RSS"
    grown = {name: res["rss_mb_after"][name] - warm["rss_mb_after"][name] for name in pids}
    assert grown["detection"] < GROWTH_LIMIT_MB, f"{serving}: RSS grew with unseen shapes: {grown} MB"
    assert grown["gateway"] < 2 * GROWTH_LIMIT_MB, f"{serving}: gateway RSS grew: {grown} MB"
