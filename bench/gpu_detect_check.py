"""GPU check of the detection service's torch path: one NVIDIA GPU, CUDA PyTorch, no network, no Paddle/FastAPI.

    python bench/gpu_detect_check.py              # PP-OCRv5 server det architecture, random weights, 960 x 960
    python bench/gpu_detect_check.py --strict     # exit 1 when a target is missed
    python bench/gpu_detect_check.py --smoke      # CPU, tiny sizes: checks that the script works

Measures, in one run:
  raw engine      TorchEngine.infer (fp16, channels_last; host float32 in, host prob maps out) at batch 1, 8, 32
  service         the service's DynamicBatcher over that engine (max batch 32), 32 concurrent callers
  service-nobatch the same with max batch 1
  guard           the precision guard: torch fp16 against torch fp32 (same weights) over the rendered
                  validation set (hmean, share of fp32's boxes matched, images/s), as the service runs it
                  before fp16 may serve (needs the detection extra's shapely, pyclipper, pydantic, Pillow)
Targets: service >= 80 % of raw at batch 32, and >= 2x service-nobatch; the guard accepts fp16 (with real
weights, --weights; with random weights only the agreement with fp32 means something). "Service" here is the batcher + engine
(the part of services/detection that runs where FastAPI is absent); inputs are already-normalised tensors.
Needs RapidOCR's torch network sources: the rapidocr package, or --networks-dir DIR (its
inference_engine/pytorch/networks folder copied over). PyYAML is optional.
"""

from __future__ import annotations

import argparse
import copy
import asyncio
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.detection.batcher import DynamicBatcher  # noqa: E402  (numpy + asyncio only)
from services.detection.engines import torch_engine  # noqa: E402  (torch + numpy only)

# arch_config.yaml's ch_PP-OCRv5_det_server entry, for machines without PyYAML
PPOCRV5_SERVER_DET = {
    "model_type": "det", "algorithm": "DB", "Transform": None,
    "Backbone": {"name": "PPHGNetV2_B4", "det": True},
    "Neck": {"name": "LKPAN", "out_channels": 256, "intracl": True},
    "Head": {"name": "PFHeadLocal", "k": 50, "mode": "large"},
}


def make_engine(args, fp16: bool | None = None, weights: Path | None = None) -> torch_engine.TorchEngine:
    settings = SimpleNamespace(device="cpu" if args.smoke else "gpu", gpu_id=0, threads=args.threads,
                               torch_random_weights=True, torch_fp16=(not args.fp32) if fp16 is None else fp16,
                               torch_channels_last=True)
    if args.networks_dir:
        torch_engine.networks_dir = lambda: Path(args.networks_dir)  # type: ignore[assignment]
    weights = weights or (Path(args.weights) if args.weights else None)
    engine = torch_engine.TorchEngine("ch_PP-OCRv5_det_server", weights, settings,
                                      arch_config=copy.deepcopy(PPOCRV5_SERVER_DET))  # building pops its keys
    engine.load([], max(args.batches))
    return engine


def guard_fp16(args) -> bool:
    """torch fp16 through the service's precision guard, against torch fp32 with the same weights."""
    import tempfile

    import torch

    from services.detection.postprocess import DBPostProcessor, PostprocessConfig
    from services.detection.precision_guard import Candidate, GuardLimits, Validator, select_precision
    from services.detection.preprocess import NormalizeConfig, ResizeConfig
    from services.detection.textset import validation_set

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.weights) if args.weights else Path(tmp) / "random.pth"
        reference = make_engine(args, fp16=False, weights=weights if args.weights else None)
        if not args.weights:  # random weights: fp16 must get the very same ones
            torch.save(reference.model.state_dict(), weights)
        images = 2 if args.smoke else args.guard_images
        side = 320 if args.smoke else 960
        validator = Validator(validation_set(images, max_side=side, real_extras=not args.smoke),
                              ResizeConfig(side, "max"), NormalizeConfig(), DBPostProcessor(PostprocessConfig()))
        fp16 = Candidate("fp16", "torch-fp16", lambda: (make_engine(args, fp16=True, weights=weights), {}))
        chosen = select_precision("fp16", reference, "torch-fp32", [fp16], lambda: validator, GuardLimits())
    for t in chosen.trials:
        print(f"guard  {t.engine:>10} {t.precision}: hmean {t.hmean}, matched {t.match_rate}, "
              f"{t.images_per_s} images/s -> {'accepted' if t.accepted else 'NOT accepted'} ({t.reason})")
    print(f"guard: {chosen.reason}")
    return chosen.precision == "fp16"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def raw_images_per_s(engine, batch: np.ndarray, seconds: float) -> float:
    engine.infer(batch)  # warm: cuDNN picks its kernels for this shape
    engine.infer(batch)
    sync()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 3 * len(batch):
        engine.infer(batch)
        done += len(batch)
    sync()
    return done / (time.perf_counter() - started)


async def service_images_per_s(engine, image: np.ndarray, concurrency: int, max_batch: int, seconds: float,
                               workers: int) -> tuple[float, dict[int, int]]:
    sizes: dict[int, int] = {}
    batcher = DynamicBatcher(engine, max_batch_size=max_batch, max_queue_delay_ms=2.0,
                             max_queue_images=4 * concurrency, bucket_sides=[image.shape[1]], warmup=False,
                             engine_workers=workers, on_batch=lambda n, s: sizes.__setitem__(n, sizes.get(n, 0) + 1))
    await batcher.start()
    await asyncio.gather(*(batcher.infer(image, 600) for _ in range(2 * concurrency)))  # warm every batch size
    sizes.clear()
    done = 0
    started = time.perf_counter()

    async def caller():
        nonlocal done
        while time.perf_counter() - started < seconds:
            await batcher.infer(image, 600)
            done += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await batcher.stop()
    return done / elapsed, sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=960)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=2, help="engine threads of the batched service")
    parser.add_argument("--threads", type=int, default=4, help="CPU threads (smoke mode)")
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--networks-dir", default=None)
    parser.add_argument("--weights", default=None, help="a PP-OCRv5 server det .pth state dict (default: random)")
    parser.add_argument("--guard-images", type=int, default=16, help="rendered validation images for the guard")
    parser.add_argument("--smoke", action="store_true", help="CPU, 64 x 64, batches 1,2,4, concurrency 4, 1 s each")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batches, args.concurrency, args.seconds, args.fp32 = 64, [1, 2, 4], 4, 1.0, True
    else:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU machine, or use --smoke")
            return 2
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")

    engine = make_engine(args)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, args.size, args.size)).astype(np.float32)
    print(f"model: PP-OCRv5_server_det architecture (RapidOCR torch network, random weights), "
          f"{'fp32' if args.fp32 else 'fp16'}, channels_last, {args.size}x{args.size}")

    raw = {}
    for b in args.batches:
        raw[b] = raw_images_per_s(engine, np.repeat(image[None], b, axis=0), args.seconds)
        print(f"raw engine      batch {b:>3}: {raw[b]:8.1f} images/s", flush=True)
    top = max(args.batches)
    batched, sizes = asyncio.run(service_images_per_s(engine, image, args.concurrency, top, args.seconds,
                                                      args.workers))
    print(f"service         concurrency {args.concurrency}: {batched:8.1f} images/s  (batch sizes {dict(sorted(sizes.items()))})")
    single, _ = asyncio.run(service_images_per_s(engine, image, args.concurrency, 1, args.seconds, 1))
    print(f"service-nobatch concurrency {args.concurrency}: {single:8.1f} images/s")

    of_raw, over_single = batched / raw[top], batched / single
    ok_raw, ok_single = of_raw >= 0.8, over_single >= 2.0
    print(f"service / raw batch {top}: {of_raw:.2f} (target >= 0.80) {'PASS' if ok_raw else 'MISS'}")
    print(f"service / service-nobatch: {over_single:.2f}x (target >= 2x) {'PASS' if ok_single else 'MISS'}")
    try:
        ok_guard = guard_fp16(args)
    except ImportError as exc:  # a bare GPU host without the detection extra: say so, count it as a miss
        print(f"guard: not run, {exc} (install the detection extra, or carry its wheels in .whl/)")
        ok_guard = False
    print(f"precision guard accepts torch fp16: {'PASS' if ok_guard else 'MISS'}")
    return 1 if args.strict and not (ok_raw and ok_single and ok_guard) else 0


if __name__ == "__main__":
    sys.exit(main())
