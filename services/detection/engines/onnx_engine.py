"""ONNX Runtime engine: TensorRT, CUDA or CPU execution providers, chosen by availability and settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..settings import DetectionSettings
from .base import Engine, Shape, as_prob_maps


def select_providers(available: Sequence[str], settings: DetectionSettings,
                     tensorrt: Callable[[], tuple[str, dict]] | None = None) -> list:
    """Execution providers in preference order; GPU ones only when the device is gpu and the build has them.
    ``tensorrt`` builds the TensorRT provider entry (profiles, caches, INT8 table: ``tensorrt.py``)."""
    providers: list = []
    if settings.device == "gpu":
        if settings.use_tensorrt and "TensorrtExecutionProvider" in available and tensorrt is not None:
            providers.append(tensorrt())
        if "CUDAExecutionProvider" in available:
            providers.append(("CUDAExecutionProvider", {"device_id": settings.gpu_id}))
        if not providers:
            raise RuntimeError(f"device=gpu but onnxruntime has only {list(available)}; install onnxruntime-gpu")
    providers.append("CPUExecutionProvider")
    return providers


class OnnxEngine(Engine):
    name = "onnxruntime"

    def __init__(self, path: Path, settings: DetectionSettings) -> None:
        self.path = path
        self.settings = settings
        self.session = None

    def load(self, buckets: Sequence[Shape], max_batch_size: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Memory must not grow with the number of input shapes served: the CPU arena keeps its peak for good,
        # and memory patterns are planned and kept per input shape. Without them ORT frees after each run.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        if not self.settings.ort_spin:
            # idle intra-op threads spin by default, taking the cores that decode/post-process share with them
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def tensorrt() -> tuple[str, dict]:
            import onnx

            from .tensorrt import ort_tensorrt_provider

            name = onnx.load(str(self.path), load_external_data=False).graph.input[0].name
            return ort_tensorrt_provider(self.path, self.settings, name, buckets, max_batch_size)

        providers = select_providers(ort.get_available_providers(), self.settings, tensorrt)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:  # InferenceSession.run is thread-safe
        output = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return as_prob_maps(output)

    def describe(self) -> dict[str, object]:
        providers = self.session.get_providers() if self.session else []
        return {"engine": self.name, "device": self.settings.device, "providers": providers,
                "threads": self.settings.threads}

    def close(self) -> None:
        self.session = None  # a rejected candidate's arena goes with its session
