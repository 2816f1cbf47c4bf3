"""Which engines can serve a model at which precision on this device, and the guarded choice between them.

CPU: int8 from NNCF (OpenVINO; plain, or accuracy-controlled where that can pay off) or ONNX Runtime static QDQ,
quantized on the calibration set and cached;
bf16 on OpenVINO where the CPU has it. GPU: TensorRT fp16/int8 (Paddle or ONNX Runtime, when use_tensorrt),
torch fp16. fp32 is the reference engine, the one ``create_engine`` builds from the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .batcher import bucket_for
from .engines import create_engine
from .engines.base import Engine, Shape
from .models import ResolvedModel
from .postprocess import DBPostProcessor, PostprocessConfig
from .precision_guard import Candidate, GuardLimits, Selection, Validator, select_precision
from .preprocess import NormalizeConfig, ResizeConfig
from .quantize import OPENVINO_METHODS, CalibrationSpec, quantize_cached
from .settings import DetectionSettings
from .textset import validation_set

log = logging.getLogger(__name__)


def fp32_settings(settings: DetectionSettings) -> DetectionSettings:
    """The same engine at fp32: no TensorRT (its fp32 still fuses and re-tiles), torch in float32."""
    return settings.model_copy(update={"use_tensorrt": False, "trt_precision": "fp32", "torch_fp16": False})


def engine_label(engine: Engine, precision: str, detail: str = "") -> str:
    return f"{engine.name}-{precision}" + (f"-{detail}" if detail else "")


def _loaded(engine: Engine, buckets: Sequence[Shape], max_batch_size: int) -> Engine:
    engine.load(buckets, max_batch_size)
    return engine


def int8_label(method: str) -> str:
    return f"{'openvino' if method in OPENVINO_METHODS else 'onnxruntime'}-int8-{method}"


def calibration_spec(method: str, settings: DetectionSettings, resize: ResizeConfig, normalize: NormalizeConfig,
                     postprocess: PostprocessConfig) -> CalibrationSpec:
    return CalibrationSpec(method, settings.calibration_images, settings.textset_max_side, resize, normalize,
                           postprocess=postprocess)


def cpu_candidates(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                   normalize: NormalizeConfig, postprocess: PostprocessConfig,
                   buckets: Sequence[Shape]) -> list[Candidate]:
    from .engines.onnx_engine import OnnxEngine
    from .engines.openvino_engine import OpenVINOEngine, has_bf16, openvino_readable

    out: list[Candidate] = []
    readable = openvino_readable(model.path) is not None
    for method in settings.int8_methods:
        openvino = method in OPENVINO_METHODS
        if openvino and not readable or method == "ort_qdq" and model.format != "onnx":
            continue

        def build(method=method, openvino=openvino) -> tuple[Engine, dict]:
            spec = calibration_spec(method, settings, resize, normalize, postprocess)
            quantized = quantize_cached(model.path, spec, settings.quantized_cache)
            engine = (OpenVINOEngine(quantized.path, settings, "int8") if openvino
                      else OnnxEngine(quantized.path, settings))
            details = {"method": method, "calibration_images": spec.images, "cache_hit": quantized.cache_hit,
                       "seconds": round(quantized.seconds, 2), "key": quantized.key, "path": str(quantized.path)}
            return _loaded(engine, buckets, settings.max_batch_size), {"quantization": details}

        bound = int8_label("nncf") if method == "nncf_ac" and "nncf" in settings.int8_methods else None
        out.append(Candidate("int8", int8_label(method), build, bound))
    if readable and has_bf16():
        out.append(Candidate("bf16", "openvino-bf16", lambda: (
            _loaded(OpenVINOEngine(model.path, settings, "bf16"), buckets, settings.max_batch_size), {})))
    return out


def gpu_candidates(model: ResolvedModel, settings: DetectionSettings, buckets: Sequence[Shape]) -> list[Candidate]:
    kind = settings.engine
    out: list[Candidate] = []
    precisions = ("int8", "fp16") if settings.use_tensorrt and kind != "torch" else ()
    if kind == "torch" or (settings.engine == "auto" and model.format == "torch"):
        precisions = ("fp16",)
    for precision in precisions:
        variant = settings.model_copy(update={"trt_precision": precision, "torch_fp16": precision == "fp16"})

        def build(variant=variant) -> tuple[Engine, dict]:
            engine = create_engine(model, variant)
            return _loaded(engine, buckets, settings.max_batch_size), {"tensorrt": variant.use_tensorrt}

        label = "torch-fp16" if precisions == ("fp16",) else f"tensorrt-{precision}"
        out.append(Candidate(precision, label, build))
    return out


def candidates_for(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                   normalize: NormalizeConfig, postprocess: PostprocessConfig,
                   buckets: Sequence[Shape]) -> list[Candidate]:
    """The reduced-precision candidates the guard tries for these settings on this device (none for fp32)."""
    if settings.precision == "fp32":
        return []
    if settings.device == "gpu":
        return gpu_candidates(model, settings, buckets)
    return cpu_candidates(model, settings, resize, normalize, postprocess, buckets)


def guarded_engine(model: ResolvedModel, settings: DetectionSettings, resize: ResizeConfig,
                   normalize: NormalizeConfig, postprocess: PostprocessConfig,
                   buckets: Sequence[Shape]) -> Selection:
    """The fp32 engine, loaded, and (unless precision=fp32) every candidate tried through the guard."""
    reference = _loaded(create_engine(model, fp32_settings(settings)), buckets, settings.max_batch_size)
    label = engine_label(reference, "fp32")
    candidates = candidates_for(model, settings, resize, normalize, postprocess, buckets)
    pad_to = None
    if settings.bucket_mode == "padded":
        def pad_to(h: int, w: int) -> tuple[int, int]:
            return bucket_for(h, w, settings.bucket_sides)

    def validator() -> Validator:
        samples = validation_set(settings.guard_images, settings.textset_max_side, settings.guard_real_images)
        return Validator(samples, resize, normalize, DBPostProcessor(postprocess), pad_to)

    limits = GuardLimits(settings.guard_max_hmean_drop, settings.guard_min_match_rate)
    return select_precision(settings.precision, reference, label, candidates, validator, limits)


__all__ = ["calibration_spec", "candidates_for", "cpu_candidates", "gpu_candidates", "guarded_engine"]
