"""The benchmark scripts run (tiny sizes): they are not timed here, only checked to work."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_detect_bench_smoke():
    out = subprocess.run([sys.executable, "bench/detect_bench.py", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ratio @ concurrency  2: service / RapidOCR" in out.stdout
    assert out.stdout.count("boxes identical to RapidOCR's") == 4
    assert " 1/1 images" in out.stdout and " 0/1 images" not in out.stdout
