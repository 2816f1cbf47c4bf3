"""The GPU generation check runs end to end in its CPU smoke mode (tiny configs, 2 steps)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_gen_check_smoke():
    summary = _load("gpu_gen_check").main(["--smoke", "--variants", "eager,compiled", "--batches", "1"])
    rows = summary["results"]
    assert [r["variant"] for r in rows] == ["eager", "compiled"]
    assert all(r["s_per_image"] > 0 and "error" not in r for r in rows)
    assert rows[0]["speedup_vs_eager"] == 1.0
