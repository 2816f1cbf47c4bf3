"""One request's images: decode + resize on the thread pool, the engine via the batcher, boxes on the pool.
A PDF or TIFF upload is opened and its pages checked against the caps first; each page then goes the same way
as an image."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import numpy as np

from services.contracts.detect import Box, DetectParams, ImageResult
from services.contracts.documents import DocumentError, OpenedDocument, TooManyPages, open_document, sniff_document

from .batcher import DynamicBatcher
from .decode import ImageDecodeError, decode_image
from .documents import page_preview, render_page
from .postprocess import DBPostProcessor, PostprocessConfig
from .preprocess import NormalizeConfig, ResizeConfig, preprocess


class InvalidImage(ValueError):
    """Upload ``index`` of the request could not be used; wraps the decode or document error."""

    def __init__(self, index: int, error: ImageDecodeError | DocumentError) -> None:
        super().__init__(f"image {index}: {error}")
        self.index = index
        self.error = error


@dataclass(frozen=True)
class _Source:
    """One upload: a plain image (decoded on its thread) or a document whose selected pages passed the caps."""

    index: int
    data: bytes
    document: OpenedDocument | None

    @property
    def pages(self) -> list[int | None]:
        return [None] if self.document is None else list(self.document.pages)


@dataclass(frozen=True)
class _Prepared:
    tensor: np.ndarray
    src_hw: tuple[int, int]
    decode_ms: float
    preprocess_ms: float
    preview: str | None = None


class Detector:
    def __init__(self, batcher: DynamicBatcher, pool: Executor, resize: ResizeConfig, normalize: NormalizeConfig,
                 postprocess: PostprocessConfig, max_image_pixels: int, timeout_s: float, *, max_pages: int = 64,
                 dpi: int = 144, chunk_pages: int = 16) -> None:
        self.batcher = batcher
        self.pool = pool
        self.resize = resize
        self.normalize = normalize
        self.postprocess = postprocess
        self.max_image_pixels = max_image_pixels
        self.timeout_s = timeout_s
        self.max_pages = max_pages
        self.dpi = dpi
        self.chunk_pages = chunk_pages  # images/pages prepared and inferred together (a bound on request memory)

    def _settings_for(self, params: DetectParams) -> tuple[ResizeConfig, DBPostProcessor]:
        resize = replace(self.resize, **{k: v for k, v in (("limit_side_len", params.limit_side_len),
                                                            ("limit_type", params.limit_type)) if v is not None})
        overrides = params.model_dump(include={"thresh", "box_thresh", "unclip_ratio", "box_type"}, exclude_none=True)
        return resize, DBPostProcessor(replace(self.postprocess, **overrides))

    def _open(self, index: int, data: bytes, params: DetectParams) -> _Source:
        kind = sniff_document(data)
        if kind is None:
            return _Source(index, data, None)
        try:
            opened = open_document(data, kind, pages=params.page_spec, dpi=params.dpi or self.dpi,
                                   max_pages=self.max_pages, max_pixels=self.max_image_pixels)
        except DocumentError as exc:
            raise InvalidImage(index, exc) from exc
        return _Source(index, data, opened)

    def _prepare(self, source: _Source, page: int | None, resize: ResizeConfig, previews: bool) -> _Prepared:
        t0 = time.perf_counter()
        try:
            if source.document is None:
                image = decode_image(source.data, self.max_image_pixels)
            else:
                image = render_page(source.document, page)
        except (ImageDecodeError, DocumentError) as exc:
            raise InvalidImage(source.index, exc) from exc
        t1 = time.perf_counter()
        tensor = preprocess(image, resize, self.normalize)
        t2 = time.perf_counter()
        preview = page_preview(image) if previews and page is not None else None
        return _Prepared(tensor, image.shape[:2], (t1 - t0) * 1000, (t2 - t1) * 1000, preview)

    async def _open_all(self, images: list[bytes], params: DetectParams) -> list[_Source]:
        """Every upload, documents opened and their pages checked; on any failure the opened ones are closed."""
        loop = asyncio.get_running_loop()
        outcomes = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._open, i, data, params) for i, data in enumerate(images)),
            return_exceptions=True)
        opened = [o for o in outcomes if isinstance(o, _Source)]
        try:
            _raise_first(outcomes)
        except BaseException:
            _close(opened)
            raise
        return opened

    async def detect(self, images: list[bytes], params: DetectParams) -> list[ImageResult]:
        resize, postprocessor = self._settings_for(params)
        opened = await self._open_all(images, params)
        try:
            pages = [(source, page) for source in opened for page in source.pages]
            if len(pages) > self.max_pages:
                raise TooManyPages(f"the request has {len(pages)} pages and images in all; the limit is "
                                   f"{self.max_pages} per request")
            results: list[ImageResult] = []
            # a long document a chunk of pages at a time: only one chunk's tensors and maps are alive at once
            for start in range(0, len(pages), self.chunk_pages):
                results += await self._detect_pages(pages[start:start + self.chunk_pages], resize, postprocessor,
                                                    params.previews)
            return results
        finally:
            _close(opened)

    async def _detect_pages(self, pages: list[tuple[_Source, int | None]], resize: ResizeConfig,
                            postprocessor: DBPostProcessor, previews: bool) -> list[ImageResult]:
        loop = asyncio.get_running_loop()
        # every page finishes (or fails) before the caller closes the documents, so none renders a closed one
        prepared = _raise_first(await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._prepare, source, page, resize, previews)
              for source, page in pages),
            return_exceptions=True))
        maps = await self.batcher.infer_many([p.tensor for p in prepared], self.timeout_s)

        def boxes_for(prob: np.ndarray, src_hw: tuple[int, int]) -> tuple[list, float]:
            t0 = time.perf_counter()
            found = postprocessor(prob, src_hw)
            return found, (time.perf_counter() - t0) * 1000

        boxed = await asyncio.gather(
            *(loop.run_in_executor(self.pool, boxes_for, prob, p.src_hw) for (prob, _), p in zip(maps, prepared))
        )
        results = []
        for (source, page), p, (_, info), (found, post_ms) in zip(pages, prepared, maps, boxed):
            timing = {"decode": p.decode_ms, "preprocess": p.preprocess_ms, "queue": info.queue_ms,
                      "inference": info.engine_ms, "postprocess": post_ms}
            results.append(ImageResult(
                source=source.index, page=page, width=p.src_hw[1], height=p.src_hw[0], preview=p.preview,
                boxes=[Box(points=b.points.tolist(), score=b.score) for b in found],
                timing_ms={k: round(v, 3) for k, v in timing.items()},
            ))
        return results


def _close(sources: list[_Source]) -> None:
    for source in sources:
        if source.document is not None:
            source.document.close()


def _raise_first(outcomes: list) -> list:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes
