"""The engine interface: it knows nothing of HTTP, batching or queues."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

Shape = tuple[int, int]


class Engine(ABC):
    """Runs a DB det network. ``infer`` may be called from several threads at once."""

    name: str = "engine"
    # infer calls that run best side by side (the batcher's engine workers at least this many): OpenVINO's CPU
    # streams; 1 for engines whose one call already uses every thread
    parallel: int = 1

    @abstractmethod
    def load(self, buckets: Sequence[Shape], max_batch_size: int) -> None:
        """Build the predictor(s). ``buckets`` are every padded (H, W) input shape ``infer`` will see."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 (normalised) -> N x H x W float32 text probability maps."""

    def describe(self) -> dict[str, object]:
        return {"engine": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def as_prob_maps(output: np.ndarray) -> np.ndarray:
    """Engines return N x 1 x H x W; the batcher wants N x H x W float32."""
    if output.ndim == 4:
        output = output[:, 0]
    return np.asarray(output, dtype=np.float32)
