"""OpenVINO engine (CPU): fp32, bf16 (where the CPU has it) and int8 models (NNCF or ONNX QDQ), one compiled
model, one infer request per calling thread. Reads .onnx, Paddle .pdmodel programs and OpenVINO IR (.xml)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import Engine, Shape, as_prob_maps

if TYPE_CHECKING:
    from ..settings import DetectionSettings

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 models: the ops left in float stay f32


def cpu_capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def has_bf16() -> bool:
    return "BF16" in cpu_capabilities()


def openvino_readable(path: Path) -> Path | None:
    """The file OpenVINO reads for a model path (an .onnx / .xml file, or a Paddle folder with a .pdmodel)."""
    if path.is_file() and path.suffix in (".onnx", ".xml", ".pdmodel"):
        return path
    if path.is_dir() and (path / "inference.pdmodel").is_file():
        return path / "inference.pdmodel"
    return None  # PIR .json Paddle programs: OpenVINO's Paddle frontend reads only .pdmodel


def read_model(path: Path):
    import openvino as ov

    readable = openvino_readable(path)
    if readable is None:
        raise ValueError(f"OpenVINO cannot read {path} (it reads .onnx, .xml and Paddle .pdmodel programs)")
    model = ov.Core().read_model(str(readable))
    if model.inputs[0].get_partial_shape().is_static or readable.suffix == ".pdmodel":
        model.reshape({model.inputs[0].any_name: ov.PartialShape([-1, 3, -1, -1])})
    return model


class OpenVINOEngine(Engine):
    name = "openvino"

    def __init__(self, path: Path, settings: "DetectionSettings", precision: str = "fp32") -> None:
        if precision not in HINTS:
            raise ValueError(f"the openvino engine runs fp32, bf16 or int8, not {precision!r}")
        self.path = path
        self.settings = settings
        self.precision = precision
        self.compiled = None
        self._local = threading.local()

    def load(self, buckets: Sequence[Shape], max_batch_size: int) -> None:
        import openvino as ov

        if self.precision == "bf16" and not has_bf16():
            raise RuntimeError(f"this CPU has no bf16 ({cpu_capabilities()})")
        streams = min(self.settings.openvino_streams, self.settings.threads)
        config = {
            "INFERENCE_PRECISION_HINT": HINTS[self.precision],
            "INFERENCE_NUM_THREADS": self.settings.threads,
            # streams split the threads, and the batcher runs one worker per stream (settings: openvino_streams)
            "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
            "NUM_STREAMS": streams,
            # the CPU plugin keeps compiled primitives per input shape in an LRU of this many executors (dozens
            # per shape); its default (5000) lets RSS grow ~5.5 MB with every new image shape
            "CPU_RUNTIME_CACHE_CAPACITY": self.settings.openvino_cache_capacity,
        }
        self.compiled = ov.Core().compile_model(read_model(self.path), "CPU", config)
        self.parallel = streams

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def infer(self, batch: np.ndarray) -> np.ndarray:
        request = self._request()
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return as_prob_maps(request.get_output_tensor(0).data.copy())

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"engine": self.name, "device": "cpu", "precision": self.precision,
                                   "threads": self.settings.threads, "model_file": self.path.name}
        if self.compiled is not None:
            info["inference_precision"] = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
            info["streams"] = self.parallel
        return info

    def close(self) -> None:
        self.compiled = None
        self._local = threading.local()
