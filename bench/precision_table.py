"""Model x engine x precision on the validation set: hmean, agreement with fp32, images/s and RSS.

    python bench/precision_table.py                    # the PyPI-shipped det models, 32 validation images
    python bench/precision_table.py --images 16 --models PP-OCRv5_mobile_det

Each configuration runs in a process of its own (so RSS is its own): load the engine, run the validation set
once for boxes (hmean, match rate against the model's fp32 engine), then again over the first 8 images for
images/s (batch 1, shapes already seen, ``--threads`` threads). int8 models are quantized first (cached under
``--cache``), so quantization time and memory do not count. The guard's verdict column applies
DETBOOTH_DETECTION_GUARD_* defaults: hmean >= fp32 - 0.005 and >= 98 % of fp32's boxes matched.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ("onnxruntime-fp32", "paddle-fp32", "openvino-fp32", "openvino-bf16", "openvino-int8-nncf_ac",
           "openvino-int8-nncf", "onnxruntime-int8-ort_qdq")


def resolved(name: str):
    from services.detection.models import SHIPPED_MODELS, ResolvedModel, read_inference_yml, shipped_model

    shipped = next(m for m in SHIPPED_MODELS if m.name == name)
    path = shipped_model(shipped)
    if path is None:
        raise SystemExit(f"{name}: the {shipped.distribution} package is not installed")
    return ResolvedModel(name, name, path, shipped.format, "package", None, read_inference_yml(path))


def applicable(model, config: str) -> bool:
    from services.detection.engines.openvino_engine import has_bf16, openvino_readable

    if config.startswith("paddle"):
        return model.format == "paddle"
    if config.startswith("onnxruntime"):
        return model.format == "onnx"
    if config == "openvino-bf16" and not has_bf16():
        return False
    return openvino_readable(model.path) is not None


def build(model, config: str, args, resize, normalize, postprocess):
    from services.detection.engines.onnx_engine import OnnxEngine
    from services.detection.engines.openvino_engine import OpenVINOEngine
    from services.detection.engines.paddle_engine import PaddleEngine
    from services.detection.quantize import OPENVINO_METHODS, CalibrationSpec, quantize_cached
    from services.detection.settings import DetectionSettings

    settings = DetectionSettings(_env_file=None, cpu_threads=args.threads)
    if "-int8-" in config:
        method = config.rsplit("-", 1)[1]
        spec = CalibrationSpec(method, args.calibration, 960, resize, normalize, postprocess=postprocess)
        path = quantize_cached(model.path, spec, Path(args.cache)).path
        return OpenVINOEngine(path, settings, "int8") if method in OPENVINO_METHODS else OnnxEngine(path, settings)
    if config == "onnxruntime-fp32":
        return OnnxEngine(model.path, settings)
    if config == "paddle-fp32":
        return PaddleEngine(model.path, settings)
    return OpenVINOEngine(model.path, settings, config.split("-")[1])


def worker(args) -> None:
    """One configuration, in this process: prints a JSON line."""
    import resource

    from services.detection.models import normalize_config, postprocess_config, resize_config
    from services.detection.postprocess import DBPostProcessor
    from services.detection.precision_guard import Validator
    from services.detection.settings import DetectionSettings
    from services.detection.textset import validation_set

    model = resolved(args.model)
    s = DetectionSettings(_env_file=None)
    resize, normalize = resize_config(model.inference_yml, s), normalize_config(model.inference_yml)
    postprocess = postprocess_config(model.inference_yml, s)
    engine = build(model, args.config, args, resize, normalize, postprocess)
    if args.quantize_only:
        return
    engine.load([], 1)
    validator = Validator(validation_set(args.images), resize, normalize,
                          DBPostProcessor(postprocess), timing_images=8)
    run = validator.run(engine)
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * 4096 >> 20
    Path(args.boxes).write_text(json.dumps([[b.tolist() for b in image] for image in run.boxes]))
    print(json.dumps({"hmean": run.hmean, "images_per_s": run.images_per_s, "rss_mb": rss,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="PP-OCRv5_mobile_det,PP-OCRv6_small_det,PP-OCRv4_mobile_det")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--images", type=int, default=32, help="rendered validation images (+ 2 photographs)")
    parser.add_argument("--calibration", type=int, default=32, help="calibration images for int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=str(ROOT / "data" / "detection" / "quantized"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quantize-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--boxes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from services.detection.evaluation import box_match_rate

    common = ["--images", str(args.images), "--calibration", str(args.calibration), "--threads",
              str(args.threads), "--cache", args.cache]
    print(f"validation: {args.images} rendered images + 2 scikit-image photos; {args.threads} threads; "
          f"int8 calibrated on {args.calibration} rendered images")
    print("| model | engine | precision | hmean | matched fp32 boxes | images/s | vs fp32 | RSS MB | guard |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = resolved(name)
            reference = None
            for config in args.configs.split(","):
                if not applicable(model, config):
                    continue
                boxes = Path(tmp) / f"{name}-{config}.json"
                cmd = [sys.executable, __file__, "--worker", "--model", name, "--config", config,
                       "--boxes", str(boxes), *common]
                if "int8" in config:  # quantize in a process of its own: its memory is not the engine's
                    subprocess.run([*cmd, "--quantize-only"], check=True, capture_output=True)
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(f"| {name} | {config} | failed: {done.stderr.strip().splitlines()[-1][:120]} |")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                found = json.loads(boxes.read_text())
                if reference is None:  # the first applicable config is the model's fp32 reference
                    reference = (row, found)
                match = box_match_rate(found, reference[1])
                speedup = row["images_per_s"] / reference[0]["images_per_s"]
                passed = row["hmean"] >= reference[0]["hmean"] - 0.005 and match >= 0.98
                engine, precision = config.split("-")[0], "-".join(config.split("-")[1:])
                print(f"| {name} | {engine} | {precision} | {row['hmean']:.3f} | {match:.1%} | "
                      f"{row['images_per_s']:.2f} | {speedup:.2f}x | {row['rss_mb']} | "
                      f"{'pass' if passed else 'fail'} |", flush=True)


if __name__ == "__main__":
    main()
