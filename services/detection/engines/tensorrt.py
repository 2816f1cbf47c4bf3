"""TensorRT as data: the optimisation profiles (min/opt/max input shapes) that the batcher's buckets call for,
ONNX Runtime's TensorRT provider options, and INT8 calibration tables computed from the calibration set.

Pure and importable without a GPU, so the options a GPU build would receive are unit-tested on CPU. Paddle's
``Config`` calls are built from the same profiles (``paddle_engine.config_calls``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Shape

# The batcher rounds sides above its largest bucket up to this step (batcher.OVERFLOW_STEP; not imported, so the
# engines never import the batcher).
OVERFLOW_STEP = 256
MIN_SIDE = 32  # DetResizeForTest never gives a side under 32

Dims = tuple[int, int, int, int]  # N, C, H, W


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile: every input within [min, max] runs, kernels are tuned for opt."""

    min: Dims
    opt: Dims
    max: Dims

    def covers(self, dims: Dims) -> bool:
        return all(lo <= d <= hi for lo, d, hi in zip(self.min, dims, self.max))


def overflow_cap(max_side_limit: int) -> int:
    """The largest side the batcher can hand an engine: max_side_limit, rounded up as it rounds overflow."""
    return -(-max_side_limit // OVERFLOW_STEP) * OVERFLOW_STEP


def trt_profiles(buckets: Sequence[Shape], max_batch_size: int, max_side_limit: int,
                 padded: bool) -> dict[Shape | None, Profile]:
    """Profiles keyed by the engine that serves them.

    padded: one static-shape engine per bucket (batch 1..max_batch_size, opt at the full batch), plus an overflow
    engine (key None) for the shapes above the largest bucket (the batcher rounds those to multiples of 256, up
    to ``overflow_cap``), so an image larger than the largest bucket still has an engine.
    exact: one dynamic engine (key None) from 32 x 32 up to ``overflow_cap``, tuned for the largest bucket."""
    top = max((max(b) for b in buckets), default=960)
    cap = max(overflow_cap(max_side_limit), top)
    profiles: dict[Shape | None, Profile] = {}
    if padded:
        for h, w in buckets:
            profiles[(h, w)] = Profile((1, 3, h, w), (max_batch_size, 3, h, w), (max_batch_size, 3, h, w))
        smallest = min((min(b) for b in buckets), default=MIN_SIDE)
        profiles[None] = Profile((1, 3, smallest, smallest), (1, 3, top, top), (max_batch_size, 3, cap, cap))
    else:
        profiles[None] = Profile((1, 3, MIN_SIDE, MIN_SIDE), (max_batch_size, 3, top, top),
                                 (max_batch_size, 3, cap, cap))
    return profiles


def engine_key(shape: Shape, keys: Iterable[Shape | None]) -> Shape | None:
    """The engine for an (H, W) batch: its bucket's static engine when there is one, else the dynamic one."""
    return shape if shape in set(keys) else None


def _dims(name: str, profiles: Sequence[Profile], which: str) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, getattr(p, which)))}" for p in profiles)


def ort_trt_options(*, device_id: int, precision: str, cache_dir: Path, min_subgraph_size: int,
                    workspace_bytes: int, input_name: str, profiles: Sequence[Profile],
                    calibration_table: str | None = None) -> dict[str, object]:
    """ONNX Runtime TensorrtExecutionProvider options: explicit profiles (several, comma-separated, as the
    provider takes them), engines and timing caches on disk, INT8 from a calibration table in ``cache_dir``."""
    if precision == "int8" and not calibration_table:
        raise ValueError("TensorRT INT8 needs a calibration table (write_ort_calibration_table)")
    options: dict[str, object] = {
        "device_id": device_id,
        "trt_fp16_enable": precision in ("fp16", "int8"),  # int8 layers TensorRT cannot quantize run in fp16
        "trt_int8_enable": precision == "int8",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_min_subgraph_size": min_subgraph_size,
        "trt_max_workspace_size": workspace_bytes,
        "trt_profile_min_shapes": _dims(input_name, profiles, "min"),
        "trt_profile_opt_shapes": _dims(input_name, profiles, "opt"),
        "trt_profile_max_shapes": _dims(input_name, profiles, "max"),
    }
    if precision == "int8":
        options |= {"trt_int8_calibration_table_name": calibration_table,  # relative to trt_engine_cache_path
                    "trt_int8_use_native_calibration_table": False}
    return options


ORT_CALIBRATION_TABLE = "calibration.flatbuffers"  # the name write_calibration_table gives the provider's format


def write_ort_calibration_table(model_path: Path, batches: Iterable[np.ndarray], out_dir: Path) -> Path:
    """TensorRT's INT8 calibration table for an fp32 ONNX model: the range of every tensor over real calibration
    images (onnxruntime's MinMax calibrator, run on CPU), written where the provider reads it. Returns the
    flatbuffers table; ``calibration.json`` beside it holds the same ranges readably."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.quant_utils import write_calibration_table

    import onnx

    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    feed = iter(batches)

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(feed, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".calibrate-") as tmp:
        calibrator = create_calibrator(model_path, [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax,
                                       providers=["CPUExecutionProvider"])
        calibrator.collect_data(Reader())
        ranges = calibrator.compute_data()
        if not len(ranges.data):
            raise RuntimeError("calibration saw no data: the calibration set is empty")
        write_calibration_table(ranges.data, dir=str(out_dir))
    return out_dir / ORT_CALIBRATION_TABLE


def pad_to(tensor: np.ndarray, shape: Shape) -> np.ndarray:
    """A 1 x 3 x h x w calibration batch placed in a zero (mean-colour) 1 x 3 x H x W one, as the batcher pads;
    what lies outside is cropped (a static-shape bucket engine sees only its own shape)."""
    h, w = shape
    out = np.zeros((tensor.shape[0], tensor.shape[1], h, w), dtype=np.float32)
    th, tw = min(h, tensor.shape[2]), min(w, tensor.shape[3])
    out[:, :, :th, :tw] = tensor[:, :, :th, :tw]
    return out


def ort_tensorrt_provider(model_path: Path, settings, input_name: str, buckets: Sequence[Shape],
                          max_batch_size: int, calibration: Iterable[np.ndarray] | None = None) -> tuple[str, dict]:
    """("TensorrtExecutionProvider", options) for an fp32 ONNX model: profiles from the buckets, engines cached
    per model file, and for INT8 a calibration table computed once from ``calibration`` (default: the rendered
    calibration set, preprocessed as served) and kept beside the engines."""
    import hashlib

    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
    cache = settings.trt_cache_dir / f"{model_path.stem}-{digest}"
    cache.mkdir(parents=True, exist_ok=True)
    profiles = trt_profiles(buckets, max_batch_size, settings.max_side_limit, padded=settings.bucket_mode == "padded")
    table = None
    if settings.trt_precision == "int8":
        if not (cache / ORT_CALIBRATION_TABLE).is_file():
            write_ort_calibration_table(model_path, calibration if calibration is not None
                                        else default_calibration(settings), cache)
        table = ORT_CALIBRATION_TABLE
    return "TensorrtExecutionProvider", ort_trt_options(
        device_id=settings.gpu_id, precision=settings.trt_precision, cache_dir=cache,
        min_subgraph_size=settings.trt_min_subgraph_size, workspace_bytes=settings.trt_workspace_mb << 20,
        input_name=input_name, profiles=list(profiles.values()), calibration_table=table)


def default_calibration(settings) -> Iterable[np.ndarray]:
    """The rendered calibration images, preprocessed as served (DetResizeForTest at the configured limit)."""
    from ..preprocess import NormalizeConfig, ResizeConfig
    from ..textset import calibration_batches

    resize = ResizeConfig(settings.limit_side_len or 960, settings.limit_type or "max", settings.max_side_limit)
    return calibration_batches(resize, NormalizeConfig(), getattr(settings, "calibration_images", 32),
                               getattr(settings, "textset_max_side", 960))
