"""A bounded locust run against /detect through the gateway: no errors, and the detection process's memory
bounded (peak RSS <= 600 MB) and not growing with the number of distinct image shapes.

The issue's 10,000 requests run with `bench/load_detect.py --requests 10000` (minutes on 2 shared cores);
here a smaller bounded run: a warm-up pass over one set of sizes, then a measured pass over sizes it has not
seen (another seed): new shapes must not cost new memory.
"""

import pytest

from bench.load_detect import run

pytestmark = pytest.mark.slow

RSS_LIMIT_MB = 600
GROWTH_LIMIT_MB = 64


@pytest.mark.fault("load: locust on /detect, 2 x 16 distinct image shapes",
                   f"0 errors; detection peak RSS <= {RSS_LIMIT_MB} MB; RSS growth over 16 unseen shapes "
                   f"< {GROWTH_LIMIT_MB} MB")
def test_detect_under_load(full_stack, fault_note):
    pids = {"gateway": full_stack.gateway.pid, "detection": full_stack.detection.proc.pid}
    warm = run(full_stack.url, "key-alice", 60, 4, pids, timeout_s=60, shapes=16, seed=1, max_side=700)
    assert warm["failures"] == 0, warm
    res = run(full_stack.url, "key-alice", 200, 8, pids, timeout_s=90, shapes=16, seed=2, max_side=700)
    assert res["requests"] >= 180 and res["failures"] == 0, res
    fault_note(f"{res['requests']} req, {res['rps']} req/s, p50 {res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, "
               f"errors {res['error_rate']:.1%}, RSS MB start {warm['rss_mb_before']}, after warm-up "
               f"{warm['rss_mb_after']}, after {res['rss_mb_after']}, peak {res['rss_mb_peak']}")
    peak = max(warm["rss_mb_peak"]["detection"], res["rss_mb_peak"]["detection"])
    assert peak <= RSS_LIMIT_MB, f"detection peaked at {peak} MB RSS"
    grown = {name: res["rss_mb_after"][name] - warm["rss_mb_after"][name] for name in pids}
    assert grown["detection"] < GROWTH_LIMIT_MB, f"RSS grew with unseen shapes: {grown} MB"
    assert grown["gateway"] < 2 * GROWTH_LIMIT_MB, f"gateway RSS grew: {grown} MB"
