"""Loaded models kept per worker within a memory budget; the least recently used goes first."""

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """The components one generation needs. `scheduler_config` is the model's noise schedule."""

    name: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]
    random_weights: bool = False
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(module_bytes(m) for m in (self.unet, self.vae, self.text_encoder))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype


def module_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class PipelineCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], LoadedModel], estimate_bytes: int = 0) -> LoadedModel:
        """The model under `key`, loading it when absent. Least recently used models are evicted before the
        load (for `estimate_bytes`) and after it (for the measured size), so the budget holds throughout."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            self._evict_for(estimate_bytes)
            model = load()
            self._evict_for(model.nbytes)
            self._models[key] = model
            return model

    def _evict_for(self, nbytes: int) -> None:
        evicted = False
        while self._models and self.used_bytes + nbytes > self.budget_bytes:
            key, _ = self._models.popitem(last=False)
            evicted = True
            log.info("pipeline cache: evicted %s to stay within %.1f GB", key, self.budget_bytes / 1e9)
        if evicted:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if nbytes > self.budget_bytes:
            log.warning(
                "a model of %.2f GB exceeds the pipeline cache budget of %.2f GB; keeping it alone",
                nbytes / 1e9,
                self.budget_bytes / 1e9,
            )

    def drop_matching(self, suffix: str) -> list[str]:
        """Unload the models whose key ends with `suffix` (a deleted fine-tune's); returns their keys."""
        with self._lock:
            gone = [k for k in self._models if k.endswith(suffix)]
            for k in gone:
                del self._models[k]
        if gone:
            gc.collect()
        return gone

    @property
    def used_bytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def keys(self) -> list[str]:
        return list(self._models)
