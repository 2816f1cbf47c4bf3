"""OpenVINO engine memory across distinct input shapes, one setting per subprocess: RSS growth and images/s.

    python bench/detect_memory.py --precisions bf16 int8 --capacities 5000 0 100 300 1000 --shapes 48
Each row: a fresh process loads the engine (the offline default model; int8 = its NNCF build when one is cached
or given with --int8-model), runs warm-up images (960 x 960, the largest, and 320 x 320), then `--shapes` distinct H x W (multiples of 32, sides
64..960, batch 1) twice: RSS after pass 1 minus after warm-up is the growth; the second pass (the same shapes
again, so a cache big enough serves them all) gives images/s, then 4 of them 5 times each (a few recurring sizes). Prints a markdown table.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def shapes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    import random

    rng = random.Random(seed)
    sides = range(64, 961, 32)
    out: list[tuple[int, int]] = []
    while len(out) < n:
        hw = (rng.choice(sides), rng.choice(sides))
        if hw not in out:
            out.append(hw)
    return out


def measure(precision: str, capacity: int, n: int, model: str) -> dict:
    import numpy as np
    import psutil

    from services.detection.engines.openvino_engine import OpenVINOEngine
    from services.detection.settings import DetectionSettings

    settings = DetectionSettings(openvino_cache_capacity=capacity)
    engine = OpenVINOEngine(Path(model), settings, precision)
    engine.load([], settings.max_batch_size)
    proc = psutil.Process()
    rng = np.random.default_rng(0)
    for side in (960, 320):  # the largest shape first: its activations are not growth
        engine.infer(rng.random((1, 3, side, side), dtype=np.float32))
    warm = proc.memory_info().rss
    sizes = shapes(n)

    def run_pass(todo: list[tuple[int, int]]) -> float:
        t0 = time.perf_counter()
        for h, w in todo:  # made one at a time: a list of inputs would itself be RSS growth
            engine.infer(np.full((1, 3, h, w), 0.5, np.float32))
        return time.perf_counter() - t0

    first_s = run_pass(sizes)
    grown = proc.memory_info().rss
    second_s = run_pass(sizes)
    few = sizes[:4] * 5  # traffic of a few recurring sizes (scans of one format)
    few_s = run_pass(few)
    return {"precision": precision, "capacity": capacity, "shapes": n,
            "rss_warm_mb": round(warm / 2**20), "growth_mb": round((grown - warm) / 2**20),
            "new_shapes_img_s": round(n / first_s, 2), "seen_shapes_img_s": round(n / second_s, 2),
            "few_shapes_img_s": round(len(few) / few_s, 2), "rss_end_mb": round(proc.memory_info().rss / 2**20)}


def default_models() -> dict[str, str]:
    from services.detection.engines.openvino_engine import openvino_readable
    from services.detection.models import SHIPPED_MODELS, shipped_model

    path = openvino_readable(shipped_model(SHIPPED_MODELS[0]))
    return {"fp32": str(path), "bf16": str(path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    ap.add_argument("--capacities", nargs="+", type=int, default=[5000, 0, 100, 300, 1000])
    ap.add_argument("--shapes", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1, help="runs of each setting (images/s is noisy)")
    ap.add_argument("--model", help="fp32/bf16 model file (default: the offline default model)")
    ap.add_argument("--int8-model", help="an NNCF OpenVINO IR (default: the newest cached nncf build)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    models = default_models() if not args.model else {"fp32": args.model, "bf16": args.model}
    int8 = args.int8_model or next(iter(sorted(Path.home().glob(".cache/detbooth*/detection/quantized/nncf*-*/model.xml"),
                                              key=lambda p: p.stat().st_mtime, reverse=True)), None)
    if int8:
        models["int8"] = str(int8)
    print("| precision | CPU_RUNTIME_CACHE_CAPACITY | RSS after warm-up MB | growth over N new "
          "shapes MB | RSS at the end MB | images/s new shapes | images/s N seen shapes | images/s 4 shapes |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in [p for p in args.precisions if p not in models]:
        print(f"| {precision} | - | - | no model | | | | |")
    for _ in range(args.rounds):  # rounds interleave the settings: the machine's load drifts
        for precision in [p for p in args.precisions if p in models]:
            for capacity in args.capacities:
                spec = {"precision": precision, "capacity": capacity, "n": args.shapes, "model": models[precision]}
                out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1]
                r = json.loads(out)
                print(f"| {precision} | {capacity} | {r['rss_warm_mb']} | "
                      f"{r['growth_mb']} (N={r['shapes']}) | {r['rss_end_mb']} | {r['new_shapes_img_s']} | "
                      f"{r['seen_shapes_img_s']} | {r['few_shapes_img_s']} |", flush=True)


if __name__ == "__main__":
    main()
