"""One request's images: decode + resize on the thread pool, the engine via the batcher, boxes on the pool."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import numpy as np

from services.contracts.detect import Box, DetectParams, ImageResult

from .batcher import DynamicBatcher
from .decode import ImageDecodeError, decode_image
from .postprocess import DBPostProcessor, PostprocessConfig
from .preprocess import NormalizeConfig, ResizeConfig, preprocess


class InvalidImage(ValueError):
    """Image ``index`` of the request could not be used; wraps the decode error."""

    def __init__(self, index: int, error: ImageDecodeError) -> None:
        super().__init__(f"image {index}: {error}")
        self.index = index
        self.error = error


@dataclass(frozen=True)
class _Prepared:
    tensor: np.ndarray
    src_hw: tuple[int, int]
    decode_ms: float
    preprocess_ms: float


class Detector:
    def __init__(self, batcher: DynamicBatcher, pool: Executor, resize: ResizeConfig, normalize: NormalizeConfig,
                 postprocess: PostprocessConfig, max_image_pixels: int, timeout_s: float) -> None:
        self.batcher = batcher
        self.pool = pool
        self.resize = resize
        self.normalize = normalize
        self.postprocess = postprocess
        self.max_image_pixels = max_image_pixels
        self.timeout_s = timeout_s

    def _settings_for(self, params: DetectParams) -> tuple[ResizeConfig, DBPostProcessor]:
        resize = replace(self.resize, **{k: v for k, v in (("limit_side_len", params.limit_side_len),
                                                            ("limit_type", params.limit_type)) if v is not None})
        overrides = params.model_dump(include={"thresh", "box_thresh", "unclip_ratio", "box_type"}, exclude_none=True)
        return resize, DBPostProcessor(replace(self.postprocess, **overrides))

    def _prepare(self, index: int, data: bytes, resize: ResizeConfig) -> _Prepared:
        t0 = time.perf_counter()
        try:
            image = decode_image(data, self.max_image_pixels)
        except ImageDecodeError as exc:
            raise InvalidImage(index, exc) from exc
        t1 = time.perf_counter()
        tensor = preprocess(image, resize, self.normalize)
        t2 = time.perf_counter()
        return _Prepared(tensor, image.shape[:2], (t1 - t0) * 1000, (t2 - t1) * 1000)

    async def detect(self, images: list[bytes], params: DetectParams) -> list[ImageResult]:
        loop = asyncio.get_running_loop()
        resize, postprocessor = self._settings_for(params)
        prepared = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._prepare, i, data, resize) for i, data in enumerate(images))
        )
        maps = await self.batcher.infer_many([p.tensor for p in prepared], self.timeout_s)

        def boxes_for(prob: np.ndarray, src_hw: tuple[int, int]) -> tuple[list, float]:
            t0 = time.perf_counter()
            found = postprocessor(prob, src_hw)
            return found, (time.perf_counter() - t0) * 1000

        boxed = await asyncio.gather(
            *(loop.run_in_executor(self.pool, boxes_for, prob, p.src_hw) for (prob, _), p in zip(maps, prepared))
        )
        results = []
        for p, (_, info), (found, post_ms) in zip(prepared, maps, boxed):
            timing = {"decode": p.decode_ms, "preprocess": p.preprocess_ms, "queue": info.queue_ms,
                      "inference": info.engine_ms, "postprocess": post_ms}
            results.append(ImageResult(
                width=p.src_hw[1], height=p.src_hw[0],
                boxes=[Box(points=b.points.tolist(), score=b.score) for b in found],
                timing_ms={k: round(v, 3) for k, v in timing.items()},
            ))
        return results
