"""The benchmark scripts run (tiny sizes): they are not timed here, only checked to work."""

import subprocess
import sys
from pathlib import Path

from tests.detection_support import package_dir

ROOT = Path(__file__).resolve().parents[3]


def test_detect_bench_smoke():
    out = subprocess.run([sys.executable, "bench/detect_bench.py", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("ratio DetBooth /detect / RapidOCR @ concurrency 2:", "hmean DetBooth 1.0000 vs RapidOCR 1.0000",
                 "peak RSS while serving: detection", "gateway overhead on /detect", "overhead ",
                 "the network alone", "onnxruntime                           fp32"):
        assert line in out.stdout, out.stdout[-3000:]


BLOCKED = ("paddle", "fastapi", "cv2", "pydantic_settings", "onnxruntime", "rapidocr")


def test_gpu_detect_check_smoke_without_paddle_fastapi_or_opencv():
    """The GPU check runs where only torch (and numpy) exist: importing any of BLOCKED fails here, so RapidOCR's
    network sources come from a folder (as when they are copied to a GPU machine without the package)."""
    networks = package_dir("rapidocr") / "inference_engine" / "pytorch" / "networks"
    code = (
        "import sys, runpy\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
        f"sys.argv = ['gpu_detect_check.py', '--smoke', '--networks-dir', {str(networks)!r}]\n"
        "runpy.run_path('bench/gpu_detect_check.py', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("raw engine      batch   4:", "service         concurrency 4:", "service-nobatch concurrency 4:",
                 "service / raw batch 4:", "service / service-nobatch:"):
        assert line in out.stdout
