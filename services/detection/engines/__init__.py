"""Engines behind one interface (``load``, ``infer``), and the factory that picks one for a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine

if TYPE_CHECKING:
    from ..models import ResolvedModel
    from ..settings import DetectionSettings

DEFAULT_ENGINE = {"paddle": "paddle", "onnx": "onnxruntime", "torch": "torch"}


def default_engine(model: "ResolvedModel", settings: "DetectionSettings") -> str:
    """``engine=auto``: the model format's own runtime, except Paddle ``.pdmodel`` programs on CPU, which OpenVINO
    runs (as PaddleX's high-performance inference does there): faster than Paddle Inference on CPU, about half
    its memory, and no memory kept per input shape. Paddle Inference stays the GPU runtime (TensorRT)."""
    if model.format == "paddle" and settings.device == "cpu":
        import importlib.util

        from .openvino_engine import openvino_readable

        if importlib.util.find_spec("openvino") is not None and openvino_readable(model.path) is not None:
            return "openvino"
    return DEFAULT_ENGINE[model.format]


def create_engine(model: "ResolvedModel", settings: "DetectionSettings") -> Engine:
    kind = default_engine(model, settings) if settings.engine == "auto" else settings.engine
    if kind == "torch":
        from ..models import TORCH_ARCHITECTURES
        from .torch_engine import TorchEngine

        architecture = TORCH_ARCHITECTURES.get(model.name, model.name)
        weights = model.path if model.format == "torch" else None
        return TorchEngine(architecture, weights, settings)
    if kind == "openvino":
        from .openvino_engine import OpenVINOEngine, openvino_readable

        if openvino_readable(model.path) is None:
            raise ValueError(f"the openvino engine reads .onnx files and Paddle .pdmodel programs; {model.path} "
                             "is neither")
        return OpenVINOEngine(model.path, settings, "fp32")
    if kind == "paddle":
        if model.format != "paddle":
            raise ValueError(f"the paddle engine needs a Paddle model folder; {model.path} is {model.format}")
        from .paddle_engine import PaddleEngine

        return PaddleEngine(model.path, settings)
    if model.format != "onnx":
        raise ValueError(f"the onnxruntime engine needs an .onnx file; {model.path} is {model.format}")
    from .onnx_engine import OnnxEngine

    return OnnxEngine(model.path, settings)


__all__ = ["Engine", "create_engine"]
