"""Detection speed and quality, side by side in one run (issue 10, point 6):

1. ``POST /detect`` through the gateway at concurrency 8 (the service as shipped: precision auto, so the fastest
   precision the guard accepted) vs RapidOCR's detector alone in-process (the same model file, the same thread
   count, 960/max, RapidOCR on its fp32 ONNX Runtime). Target: >= 2.0x, with DetBooth's hmean on the same images
   >= RapidOCR's - 0.005.
2. The network alone (no decode, no pre/post-processing, batch 1) for each engine x precision the service can
   serve, and RapidOCR's own onnxruntime session.
3. Gateway overhead on /detect: a small image sent straight to the detection service vs through the gateway,
   alternating, ``--pairs`` pairs; p50 of each and their difference. Target <= 2 ms.

    python bench/detect_bench.py                       # ~10 min on 2 cores (first start quantizes: minutes more)
    python bench/detect_bench.py --images 16 --requests 64 --pairs 100
    python bench/detect_bench.py --smoke               # one tiny run: checks the script, measures nothing

The images are the project's rendered validation set (services/detection/textset) with its ground truth, scored
by services/detection/evaluation. Systems run in interleaved rounds so drifts in machine load hit both alike;
on a shared machine the figures still move between runs: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = dict(limit_side_len=960, limit_type="max", thresh=0.3, box_thresh=0.6, unclip_ratio=1.5)
KEY = "bench-key"
TARGET_RATIO, HMEAN_SLACK, OVERHEAD_MS, RSS_LIMIT_MB = 2.0, 0.005, 2.0, 600


# ----------------------------------------------------------------------------------------------- images


def validation_images(count: int, smoke: bool) -> list[tuple[str, np.ndarray, list | None]]:
    """(name, BGR image, ground-truth polygons or None) from the project's rendered validation set."""
    if smoke:
        from tests.detection_support import render_lines

        image, boxes = render_lines(0, 320, 224)
        return [("rendered-320x224", image, [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)] for x0, y0, x1, y1 in boxes])]
    try:
        from services.detection.textset import validation_set
    except ImportError:  # before the rendered sets landed: the test suite's rendered lines
        from tests.detection_support import render_lines

        out = []
        for i in range(count):
            w, h = (640, 480) if i % 3 == 0 else (960, 640) if i % 3 == 1 else (480, 800)
            image, boxes = render_lines(i, w, h, lines=max(3, h // 80))
            out.append((f"lines-{i}", image, [[(a, b), (c, b), (c, d), (a, d)] for a, b, c, d in boxes]))
        return out
    return [(s.name, s.image, None if s.polygons is None else [p.tolist() for p in s.polygons])
            for s in validation_set(count)]


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def hmean(found: dict[int, list], images) -> float | None:
    """ICDAR-style hmean (IoU >= 0.5) over the images with ground truth; ``found[i]`` are image i's polygons."""
    try:
        from services.detection.evaluation import detection_score
    except ImportError:
        return None
    scored = [i for i, (_, _, truth) in enumerate(images) if truth is not None]
    if not scored:
        return None
    return detection_score([found[i] for i in scored], [images[i][2] for i in scored]).hmean


# ----------------------------------------------------------------------------------------------- RapidOCR


def rapidocr_detector(model_path: Path, threads: int):
    from rapidocr import RapidOCR

    params = {"Global.use_cls": False, "Global.use_rec": False, "Global.log_level": "warning",
              "Det.limit_side_len": PARAMS["limit_side_len"], "Det.limit_type": PARAMS["limit_type"],
              "Det.mean": [0.485, 0.456, 0.406], "Det.std": [0.229, 0.224, 0.225],  # PaddleOCR's NormalizeImage
              "Det.thresh": PARAMS["thresh"], "Det.box_thresh": PARAMS["box_thresh"],
              "Det.unclip_ratio": PARAMS["unclip_ratio"], "Det.use_dilation": False, "Det.score_mode": "fast",
              "Det.model_path": str(model_path), "EngineConfig.onnxruntime.intra_op_num_threads": threads,
              "EngineConfig.onnxruntime.inter_op_num_threads": 1}
    return RapidOCR(params=params)._load_det_model()


def run_rapidocr(detector, items, concurrency: int, requests: int, start: int = 0):
    """``concurrency`` threads calling the detector in-process, decode included (as the service does)."""

    def one(i: int):
        started = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(items[i % len(items)][1], np.uint8), cv2.IMREAD_COLOR)
        out = detector(image)
        boxes = [] if out.boxes is None else [np.asarray(b).tolist() for b in out.boxes]
        return i % len(items), time.perf_counter() - started, boxes

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        results = list(pool.map(one, range(start, start + requests)))
    return time.perf_counter() - started, results


# ----------------------------------------------------------------------------------------------- the stack


class Stack:
    """Redis, the detection service (as shipped, offline) and the gateway, on loopback."""

    def __init__(self, threads: int, log_dir: Path, data_dir: Path, precision: str = "auto") -> None:
        from tests.integration.detection.conftest import DetectionServer
        from tests.procs import base_env, start_gateway, start_redis

        self.procs = []
        self.redis, redis_url = start_redis(log_dir)
        self.procs.append(self.redis)
        det_env = {f"DETBOOTH_DETECTION_{k.upper()}": str(v) for k, v in {
            "cpu_threads": threads, "allow_download": "false", "paddlex_cache_dir": log_dir / "no-paddlex",
            "data_dir": data_dir, "max_queue_images": 1024, "precision": precision,
            # RapidOCR runs ONNX files only: the ONNX fallback (PP-OCRv5 mobile det), so both sides run one file
            "engine": "onnxruntime", **PARAMS}.items()}
        self.detection = DetectionServer(det_env, log_dir / "detection.log")
        self.readiness = self.detection.wait_ready(timeout=1800)  # a first start quantizes (minutes)
        env = base_env(redis_url, data_dir / "gateway", DETBOOTH_API_KEYS=KEY, DETBOOTH_DETECTION_URL=self.detection.url,
                       DETBOOTH_RATE_LIMIT_PER_MINUTE="100000000", DETBOOTH_DETECTION_TIMEOUT_S="300")
        self.gateway, self.url = start_gateway(env, log_dir)
        self.procs.append(self.gateway)

    def stop(self) -> None:
        self.detection.stop()
        for p in reversed(self.procs):
            p.stop()


async def _load(url: str, path: str, headers: dict, items, concurrency: int, requests: int, start: int = 0):
    results: list = []
    counter = iter(range(start, start + requests))
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            for i in counter:
                name, data = items[i % len(items)]
                started = time.perf_counter()
                r = await client.post(path, files=[("images", (name, data, "image/png"))])
                r.raise_for_status()
                body = r.json()
                boxes = [b["points"] for b in body["results"][0]["boxes"]]
                results.append((i % len(items), time.perf_counter() - started, boxes, body.get("precision")))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, results


# ----------------------------------------------------------------------------------------------- sections


def summary(wall: float, results) -> dict:
    lat = sorted(r[1] for r in results)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    return {"ips": len(results) / wall, "p50": statistics.median(lat) * 1000, "p99": p99 * 1000}


def throughput(stack: Stack, detector, items, images, args) -> None:
    c = args.concurrency
    print(f"\n--- 1. POST /detect through the gateway vs RapidOCR's detector alone: concurrency {c}, "
          f"{args.requests} requests each in {args.rounds} interleaved rounds, {len(items)} images", flush=True)
    headers = {"Authorization": f"Bearer {KEY}"}
    runners = {
        "rapidocr": lambda n, s: run_rapidocr(detector, items, c, n, s),
        "detbooth /detect": lambda n, s: asyncio.run(_load(stack.url, "/detect", headers, items, c, n, s)),
    }
    found: dict[str, dict[int, list]] = {name: {} for name in runners}
    for name, run in runners.items():  # warm-up: every image once (first-seen shapes, thread pools, connections)
        found[name] = {i: boxes for i, _, boxes, *_ in run(len(items), 0)[1]}
    from bench.load_detect import PeakRSS

    peak = PeakRSS({"detection": stack.detection.proc.pid, "gateway": stack.gateway.pid})
    peak.__enter__()
    walls = dict.fromkeys(runners, 0.0)
    results: dict[str, list] = {name: [] for name in runners}
    per_round = max(c, -(-args.requests // args.rounds))
    for r in range(args.rounds):
        for name, run in runners.items():
            wall, res = run(per_round, r * per_round)
            walls[name] += wall
            results[name] += res
    peak.__exit__(None, None, None)
    stats = {name: summary(walls[name], results[name]) for name in runners}
    print(f"{'system':<20}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'hmean':>8}")
    scores = {}
    for name in runners:
        scores[name] = hmean(found[name], images)
        s = stats[name]
        shown = "-" if scores[name] is None else f"{scores[name]:.4f}"
        print(f"{name:<20}{s['ips']:>10.2f}{s['p50']:>9.0f}{s['p99']:>9.0f}{shown:>8}")
    precisions = sorted({p for *_, p in results["detbooth /detect"] if p})
    ratio = stats["detbooth /detect"]["ips"] / stats["rapidocr"]["ips"]
    print(f"served precision: {', '.join(precisions) or 'not reported'}; "
          f"engine: {stack.readiness.get('engine')}")
    print(f"peak RSS while serving: detection {peak.peak['detection']:.0f} MB "
          f"({'PASS' if peak.peak['detection'] <= RSS_LIMIT_MB else 'MISS'} target <= {RSS_LIMIT_MB} MB), "
          f"gateway {peak.peak['gateway']:.0f} MB")
    print(f"ratio DetBooth /detect / RapidOCR @ concurrency {c}: {ratio:.2f}x "
          f"({'PASS' if ratio >= TARGET_RATIO else 'MISS'} target >= {TARGET_RATIO}x)")
    if None not in scores.values():
        d, r = scores["detbooth /detect"], scores["rapidocr"]
        print(f"hmean DetBooth {d:.4f} vs RapidOCR {r:.4f}: "
              f"{'PASS' if d >= r - HMEAN_SLACK else 'MISS'} (>= RapidOCR's - {HMEAN_SLACK})")


def network_only(stack: Stack, images, args) -> None:
    """Each engine x precision alone: preprocessed tensors at batch 1, second pass timed (shapes already seen)."""
    from services.detection.preprocess import NormalizeConfig, ResizeConfig, preprocess

    print(f"\n--- 2. the network alone, batch 1, {args.threads} threads, {len(images)} images at 960/max", flush=True)
    resize = ResizeConfig(PARAMS["limit_side_len"], PARAMS["limit_type"])
    tensors = [preprocess(image, resize, NormalizeConfig()) for _, image, _ in images]
    rows = [("rapidocr", "fp32", _time_session_of(rapidocr_detector(Path(stack.readiness["model"]["path"]),
                                                                         args.threads), tensors))]
    for label, precision, engine in _engines(stack, args):
        try:
            rows.append((label, precision, _time_engine(engine.infer, tensors)))
        finally:
            engine.close()
    base = rows[0][2]
    print(f"{'engine':<32}{'precision':>10}{'images/s':>10}{'vs RapidOCR':>13}")
    for label, precision, ips in rows:
        print(f"{label:<32}{precision:>10}{ips:>10.2f}{ips / base:>12.2f}x")


def _time_engine(infer, tensors) -> float:
    for t in tensors:
        infer(t[None])
    started = time.perf_counter()
    for t in tensors:
        infer(t[None])
    return len(tensors) / (time.perf_counter() - started)


def _time_session_of(detector, tensors) -> float:
    session = detector.session.session  # RapidOCR's OrtInferSession wraps an onnxruntime.InferenceSession
    name = session.get_inputs()[0].name
    return _time_engine(lambda x: session.run(None, {name: x}), tensors)


def _engines(stack: Stack, args):
    """(label, precision, loaded engine) for the served model: fp32 on each CPU engine that reads it, then every
    reduced-precision candidate the precision guard would try (built from the same caches the service uses)."""
    from services.detection.engines import create_engine
    from services.detection.models import normalize_config, postprocess_config, resize_config, resolve_model
    from services.detection.settings import DetectionSettings

    values = {"cpu_threads": args.threads, "allow_download": False, "data_dir": args.data_dir,
              "paddlex_cache_dir": args.data_dir / "no-paddlex", "engine": "onnxruntime", **PARAMS}  # as the service
    settings = DetectionSettings(**{k: v for k, v in values.items() if k in DetectionSettings.model_fields})
    model = resolve_model(settings)
    buckets: list = []
    try:
        from services.detection import engine_selection
    except ImportError:  # before the precision guard: fp32 engines only
        engine_selection = None
    fp32 = engine_selection.fp32_settings(settings) if engine_selection else settings
    kinds = ["onnxruntime", "openvino"] if model.format == "onnx" else [fp32.engine]
    for kind in kinds:
        try:
            engine = create_engine(model, fp32.model_copy(update={"engine": kind}))
            engine.load(buckets, 1)
        except Exception as exc:  # noqa: BLE001 - an engine this model cannot run is reported, not fatal
            print(f"{kind} fp32: not available ({type(exc).__name__}: {exc})")
            continue
        if engine.name != kind:  # this build has no such engine: the factory fell back to another
            engine.close()
            continue
        yield kind, "fp32", engine
    if engine_selection is None or args.precision == "fp32":
        return
    yml = model.inference_yml
    for candidate in engine_selection.cpu_candidates(model, settings, resize_config(yml, settings),
                                                     normalize_config(yml), postprocess_config(yml, settings),
                                                     buckets):
        try:
            engine, _ = candidate.build()
        except Exception as exc:  # noqa: BLE001
            print(f"{candidate.label}: not built ({type(exc).__name__}: {exc})")
            continue
        yield candidate.label, candidate.precision, engine


def gateway_overhead(stack: Stack, args) -> None:
    from tests.detection_support import render_lines

    print(f"\n--- 3. gateway overhead on /detect: a 160x64 image, {args.pairs} pairs, direct vs through the gateway, "
          "one at a time", flush=True)
    data = png(render_lines(7, 160, 64, lines=1)[0])
    files = [("images", ("small.png", data, "image/png"))]
    direct, via = [], []
    with httpx.Client(base_url=stack.detection.url, timeout=60) as d, \
            httpx.Client(base_url=stack.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as g:
        for _ in range(10):  # connections, first-seen shape
            d.post("/v1/detect", files=files).raise_for_status()
            g.post("/detect", files=files).raise_for_status()
        for i in range(args.pairs):
            for client, path, out in ((d, "/v1/detect", direct), (g, "/detect", via))[:: 1 if i % 2 else -1]:
                started = time.perf_counter()
                client.post(path, files=files).raise_for_status()
                out.append((time.perf_counter() - started) * 1000)
    pd, pg = statistics.median(direct), statistics.median(via)
    print(f"p50 direct {pd:.2f} ms, through the gateway {pg:.2f} ms: overhead {pg - pd:.2f} ms "
          f"({'PASS' if pg - pd <= OVERHEAD_MS else 'MISS'} target <= {OVERHEAD_MS} ms)")


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images", type=int, default=24, help="validation images (the same for both systems)")
    parser.add_argument("--requests", type=int, default=96, help="requests per system (at least the images)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds the requests are split into")
    parser.add_argument("--pairs", type=int, default=200, help="direct/gateway pairs for the overhead")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "detbooth-bench",
                        help="the service's data dir: quantized models cached here are reused by the next run")
    parser.add_argument("--precision", default="auto", help="the service's DETBOOTH_DETECTION_PRECISION")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: throughput,network,overhead")
    parser.add_argument("--smoke", action="store_true", help="one tiny image, few requests: checks the script")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # RapidOCR configures the root logger at INFO
    if args.smoke:
        args.concurrency, args.requests, args.rounds, args.pairs, args.precision = 2, 2, 1, 3, "fp32"
    skip = set(filter(None, args.skip.split(",")))
    images = validation_images(args.images, args.smoke)
    items = [(f"{name}.png", png(image)) for name, image, _ in images]
    print(f"DetBooth detection bench: {args.threads} threads, {os.cpu_count()} cores "
          f"(a shared machine: figures move between runs, the ratios less)", flush=True)
    with tempfile.TemporaryDirectory(prefix="detect-bench-") as tmp:
        stack = Stack(args.threads, Path(tmp), args.data_dir, args.precision)
        try:
            model = stack.readiness["model"]
            guard = stack.readiness.get("precision") or {}
            print(f"served model: {model['name']} ({model['path']})\nprecision guard: {guard.get('reason', '-')}")
            for t in guard.get("tried", []):
                print(f"  {t['engine']:<28}{t['precision']:>6}  hmean {t.get('hmean')}  match {t.get('match_rate')}  "
                      f"{t.get('images_per_s')} images/s  {'accepted' if t['accepted'] else 'rejected'}")
            if "throughput" not in skip:
                detector = rapidocr_detector(Path(model["path"]), args.threads)
                throughput(stack, detector, items, images, args)
                del detector
            if "overhead" not in skip:
                gateway_overhead(stack, args)
        finally:
            stack.stop()
        if "network" not in skip:  # after the stack stopped: the engines have the cores to themselves
            network_only(stack, images, args)


if __name__ == "__main__":
    main()
