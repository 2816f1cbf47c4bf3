"""A bounded locust run against /detect through the gateway: no errors, memory bounded across image shapes.

The issue's 10,000 requests run with `bench/load_detect.py --requests 10000` (minutes on 2 shared cores);
here a smaller bounded run: a warm-up pass (so every bucket shape is built), then the measured one.
"""

import pytest

from bench.load_detect import run

pytestmark = pytest.mark.slow


@pytest.mark.fault("load: locust on /detect, 8 image shapes",
                   "0 errors; RSS growth of gateway and detection < 150 MB after a warm-up over every shape")
def test_detect_under_load(full_stack, fault_note):
    pids = {"gateway": full_stack.gateway.pid, "detection": full_stack.detection.proc.pid}
    warm = run(full_stack.url, "key-alice", 80, 4, pids, timeout_s=60)
    assert warm["failures"] == 0, warm
    res = run(full_stack.url, "key-alice", 400, 8, pids, timeout_s=90)
    assert res["requests"] >= 380 and res["failures"] == 0, res
    fault_note(f"{res['requests']} req, {res['rps']} req/s, p50 {res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, "
               f"errors {res['error_rate']:.1%}, RSS MB start {warm['rss_mb_before']}, after warm-up {warm['rss_mb_after']}, "
               f"after {res['rss_mb_after']}")
    grown = {name: res["rss_mb_after"][name] - warm["rss_mb_after"][name] for name in pids}
    assert max(grown.values()) < 150, f"RSS grew after the warm-up: {grown} MB"
