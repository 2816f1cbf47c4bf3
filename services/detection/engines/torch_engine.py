"""PyTorch engine on the PP-OCR det networks that RapidOCR ships (``rapidocr.inference_engine.pytorch``).

CUDA with fp16 and channels_last is its purpose (the GPU path checkable without a Paddle GPU build); it also
runs on CPU. Weights: a RapidOCR/PaddleOCR2Pytorch ``.pth`` state dict, or random (architecture benchmarks).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import Engine, Shape, as_prob_maps

if TYPE_CHECKING:  # this module must import on a GPU box with torch only (bench/gpu_detect_check.py)
    from ..settings import DetectionSettings

NETWORKS_PACKAGE = "_detbooth_rapidocr_networks"


def networks_dir() -> Path:
    """RapidOCR's torch network sources, found without importing rapidocr (which pulls in onnxruntime, cv2)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the torch engine needs the rapidocr package for its PP-OCR network definitions")
    return Path(next(iter(spec.submodule_search_locations))) / "inference_engine" / "pytorch" / "networks"


def build_network(architecture: str, source: Path | None = None, config: dict | None = None):
    """An untrained RapidOCR torch det network for an arch_config.yaml key (e.g. ch_PP-OCRv5_det_server),
    or for an explicit architecture ``config`` (the yaml entry as a dict)."""
    source = source or networks_dir()
    if NETWORKS_PACKAGE not in sys.modules:
        package = types.ModuleType(NETWORKS_PACKAGE)
        package.__path__ = [str(source)]
        sys.modules[NETWORKS_PACKAGE] = package
    BaseModel = importlib.import_module(f"{NETWORKS_PACKAGE}.architectures.base_model").BaseModel
    if config is not None:
        return BaseModel(config)
    import yaml

    with open(source / "arch_config.yaml") as f:
        configs = yaml.safe_load(f)
    if architecture not in configs or configs[architecture].get("model_type") != "det":
        known = sorted(k for k, v in configs.items() if v.get("model_type") == "det")
        raise ValueError(f"unknown det architecture {architecture!r}; known: {known}")
    return BaseModel(configs[architecture])


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, architecture: str, weights: Path | None, settings: "DetectionSettings",
                 arch_config: dict | None = None) -> None:
        self.architecture = architecture
        self.arch_config = arch_config
        self.weights = weights
        self.settings = settings
        self.model = None
        self._local = threading.local()

    def load(self, buckets: Sequence[Shape], max_batch_size: int) -> None:
        import torch

        if self.settings.device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("device=gpu but torch sees no CUDA device")
            self.device = torch.device("cuda", self.settings.gpu_id)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(self.settings.threads)
        model = build_network(self.architecture, config=self.arch_config)
        if self.weights is not None:
            model.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        elif not self.settings.torch_random_weights:
            raise ValueError("the torch engine needs a .pth state dict, or torch_random_weights=true")
        self.dtype = torch.float16 if self.device.type == "cuda" and self.settings.torch_fp16 else torch.float32
        self.memory_format = torch.channels_last if self.settings.torch_channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, self.dtype, memory_format=self.memory_format)

    def _stream(self):
        """One CUDA stream per calling thread, so one batch's copies overlap another's kernels."""
        import torch

        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        return stream

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import contextlib

        import torch

        cuda = self.device.type == "cuda"
        with torch.inference_mode(), (torch.cuda.stream(self._stream()) if cuda else contextlib.nullcontext()):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            x = x.to(self.dtype).contiguous(memory_format=self.memory_format)  # cast on the device
            y = self.model(x)
            if isinstance(y, dict):
                y = y["maps"]
            y = y[:, 0]
            # fp16 halves the device-to-host copy; probabilities in [0, 1] keep ~3 decimal digits
            host = y.cpu() if y.dtype == torch.float32 else y.to(torch.float16).cpu()
        return as_prob_maps(host.numpy())

    def describe(self) -> dict[str, object]:
        return {"engine": self.name, "device": self.settings.device, "architecture": self.architecture,
                "fp16": str(getattr(self, "dtype", "")).endswith("16"), "random_weights": self.weights is None}
