"""PyTorch engine on the PP-OCR det networks that RapidOCR ships (``rapidocr.inference_engine.pytorch``).

CUDA with fp16 and channels_last is its purpose (the GPU path checkable without a Paddle GPU build); it also
runs on CPU. Weights: a RapidOCR/PaddleOCR2Pytorch ``.pth`` state dict, or random (architecture benchmarks).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
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


def build_network(architecture: str, source: Path | None = None):
    """An untrained RapidOCR torch det network for an arch_config.yaml key (e.g. ch_PP-OCRv5_det_server)."""
    import yaml

    source = source or networks_dir()
    if NETWORKS_PACKAGE not in sys.modules:
        package = types.ModuleType(NETWORKS_PACKAGE)
        package.__path__ = [str(source)]
        sys.modules[NETWORKS_PACKAGE] = package
    BaseModel = importlib.import_module(f"{NETWORKS_PACKAGE}.architectures.base_model").BaseModel
    with open(source / "arch_config.yaml") as f:
        configs = yaml.safe_load(f)
    if architecture not in configs or configs[architecture].get("model_type") != "det":
        known = sorted(k for k, v in configs.items() if v.get("model_type") == "det")
        raise ValueError(f"unknown det architecture {architecture!r}; known: {known}")
    return BaseModel(configs[architecture])


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, architecture: str, weights: Path | None, settings: "DetectionSettings") -> None:
        self.architecture = architecture
        self.weights = weights
        self.settings = settings
        self.model = None

    def load(self, buckets: Sequence[Shape], max_batch_size: int) -> None:
        import torch

        if self.settings.device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("device=gpu but torch sees no CUDA device")
            self.device = torch.device("cuda", self.settings.gpu_id)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(self.settings.threads)
        model = build_network(self.architecture)
        if self.weights is not None:
            model.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        elif not self.settings.torch_random_weights:
            raise ValueError("the torch engine needs a .pth state dict, or torch_random_weights=true")
        self.dtype = torch.float16 if self.device.type == "cuda" and self.settings.torch_fp16 else torch.float32
        self.memory_format = torch.channels_last if self.settings.torch_channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, self.dtype, memory_format=self.memory_format)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            x = x.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = self.model(x)
            if isinstance(y, dict):
                y = y["maps"]
            return as_prob_maps(y.float().cpu().numpy())

    def describe(self) -> dict[str, object]:
        return {"engine": self.name, "device": self.settings.device, "architecture": self.architecture,
                "fp16": str(getattr(self, "dtype", "")).endswith("16"), "random_weights": self.weights is None}
