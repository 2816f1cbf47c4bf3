"""Post-training INT8 quantization on the rendered calibration set, cached on disk.

Three methods: plain NNCF PTQ (``nncf``), NNCF with accuracy control (``nncf_ac``: the layers that cost the
guard's score on held-out calibration renders go back to float, see ``accuracy_control``; both give OpenVINO IR,
served by the openvino engine) and ONNX Runtime static QDQ (an .onnx file, served by onnxruntime). Calibration
images are preprocessed exactly as serving does. A quantized model is built once and cached under
``cache_dir/<key>/``, the key hashing the model file(s), the method and the calibration settings; a later start
finds it there and skips the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .accuracy_control import AccuracyControl
from .postprocess import PostprocessConfig
from .preprocess import NormalizeConfig, ResizeConfig
from .textset import SET_VERSION, calibration_batches

log = logging.getLogger(__name__)

Method = Literal["nncf_ac", "nncf", "ort_qdq"]
OUTPUT = {"nncf_ac": "model.xml", "nncf": "model.xml", "ort_qdq": "model.onnx"}
OPENVINO_METHODS = ("nncf_ac", "nncf")


@dataclass(frozen=True)
class CalibrationSpec:
    method: Method
    images: int = 32
    max_side: int = 960
    resize: ResizeConfig = ResizeConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    set_version: int = SET_VERSION
    postprocess: PostprocessConfig = PostprocessConfig()  # nncf_ac scores boxes, as served
    accuracy: AccuracyControl = AccuracyControl()  # nncf_ac only


@dataclass(frozen=True)
class Quantized:
    path: Path  # the quantized model file
    key: str
    cache_hit: bool
    seconds: float  # spent quantizing (or finding the cached model)


def model_digest(path: Path) -> str:
    """sha256 over a model file, or over a Paddle folder's program and weights."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                 if p.suffix in (".pdmodel", ".pdiparams", ".json", ".onnx"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(model_path: Path, spec: CalibrationSpec) -> str:
    settings = json.dumps(asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(f"{model_digest(model_path)}\n{settings}".encode()).hexdigest()[:24]


def head_nodes(op_names_and_types: list[tuple[str, str]]) -> list[str]:
    """The DB head: every op after the graph's last Concat (the fused neck). Its two transposed convolutions
    upsample to the probability map, where int8 rounding moves box edges; it stays in float (a few % of the
    compute)."""
    last = max((i for i, (_, kind) in enumerate(op_names_and_types) if kind == "Concat"), default=None)
    return [] if last is None else [name for name, _ in op_names_and_types[last + 1:] if name]


def _nncf(model_path: Path, out: Path, spec: CalibrationSpec) -> None:
    import nncf
    import openvino as ov

    from .accuracy_control import quantize_with_guard_metric
    from .engines.openvino_engine import read_model

    model = read_model(model_path)
    head = head_nodes([(op.get_friendly_name(), op.get_type_name()) for op in model.get_ordered_ops()])
    data = list(calibration_batches(spec.resize, spec.normalize, spec.images, spec.max_side))
    options = dict(subset_size=len(data), preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=True,
                   ignored_scope=nncf.IgnoredScope(names=head, validate=False))
    if spec.method == "nncf_ac":
        quantized = quantize_with_guard_metric(model, data, spec.accuracy, spec.images, spec.max_side, spec.resize,
                                               spec.normalize, spec.postprocess, **options)
    else:
        quantized = nncf.quantize(model, nncf.Dataset(data), **options)
    ov.save_model(quantized, str(out), compress_to_fp16=False)


def _ort_qdq(model_path: Path, out: Path, spec: CalibrationSpec) -> None:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if model_path.suffix != ".onnx":
        raise ValueError(f"ONNX Runtime quantizes .onnx models only, not {model_path}")
    graph = onnx.load(str(model_path), load_external_data=False).graph
    input_name = graph.input[0].name
    head = head_nodes([(node.name, node.op_type) for node in graph.node])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_batches(spec.resize, spec.normalize, spec.images, spec.max_side)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=head)
    prepared.unlink()


QUANTIZERS = {"nncf_ac": _nncf, "nncf": _nncf, "ort_qdq": _ort_qdq}


def quantize_cached(model_path: Path, spec: CalibrationSpec, cache_dir: Path) -> Quantized:
    """The quantized model for (model, spec): from the cache when there, else built now and cached atomically."""
    started = time.perf_counter()
    key = cache_key(model_path, spec)
    folder = cache_dir / f"{spec.method}-{key}"
    target = folder / OUTPUT[spec.method]
    if target.is_file():
        log.info("quantized model (%s) found in the cache: %s", spec.method, folder)
        return Quantized(target, key, True, time.perf_counter() - started)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("quantizing %s to int8 with %s on %d calibration images", model_path, spec.method, spec.images)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{spec.method}-") as tmp:
        QUANTIZERS[spec.method](model_path, Path(tmp) / OUTPUT[spec.method], spec)
        (Path(tmp) / "calibration.json").write_text(json.dumps(
            {"source": str(model_path), **asdict(spec)}, indent=1, default=str))
        try:
            Path(tmp).rename(folder)
        except OSError:  # another process cached the same key meanwhile: keep theirs
            if not target.is_file():
                raise
    seconds = time.perf_counter() - started
    log.info("quantized %s with %s in %.1f s", model_path.name, spec.method, seconds)
    return Quantized(target, key, False, seconds)


def clear_cache(cache_dir: Path) -> None:
    shutil.rmtree(cache_dir, ignore_errors=True)
