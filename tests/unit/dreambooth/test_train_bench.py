"""The training benchmarks run end to end in their CPU smoke mode."""

import importlib.util
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_train_check_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    rows = _load("gpu_train_check").main(["--smoke", "--json", str(out)])
    assert [(r["method"], r["train_text_encoder"]) for r in rows] == [("full", False), ("lora", False)]
    for r in rows:
        assert r["lightning"]["steps_per_s"] > 0 and r["lightning"]["peak_mib"] > 0
    assert json.loads(out.read_text())["rows"][0]["resolution"] == 64


def test_train_bench_cases_and_baseline(tiny_sd):
    bench = _load("train_bench")
    rows = bench.run_cases(tiny_sd, resolution=64, steps=3, precision="32", cases=[("lora", True)])
    (row,) = rows
    assert row["lightning"]["steps_per_s"] > 0 and row["plain_loop"]["steps_per_s"] > 0
    assert math.isfinite(row["lightning_over_plain_speed"])
