"""Dynamic batcher: images wait at most ``max_queue_delay_ms`` to share one engine call with others of the same
shape: their exact resized shape, or (``pad_to_buckets``) the bucket shape they are zero-padded to.
Only numpy and asyncio here, so it runs beside any engine (bench/gpu_detect_check.py)."""

from __future__ import annotations

import asyncio
import bisect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .engines.base import Engine, Shape

log = logging.getLogger(__name__)

OVERFLOW_STEP = 256  # sides above the largest bucket round up to this (still a bounded set: sides <= limit)


class BatcherError(RuntimeError):
    pass


class QueueFull(BatcherError):
    """More images are waiting than ``max_queue_images``: the caller should retry later (503)."""


class DeadlineExceeded(BatcherError):
    """The image waited past its deadline before reaching the engine (504)."""


class ShuttingDown(BatcherError):
    """The batcher is stopping and takes no new work, or stopped before this image ran (503)."""


def bucket_for(height: int, width: int, sides: Sequence[int]) -> Shape:
    """The padded input shape for a (multiple-of-32) resized image: the smallest bucket side that fits each side."""
    ordered = sorted(sides)

    def side(value: int) -> int:
        i = bisect.bisect_left(ordered, value)
        if i < len(ordered):
            return ordered[i]
        return -(-value // OVERFLOW_STEP) * OVERFLOW_STEP

    return side(height), side(width)


def all_buckets(sides: Sequence[int]) -> list[Shape]:
    return [(h, w) for h in sorted(sides) for w in sorted(sides)]


@dataclass
class BatchInfo:
    batch_size: int
    queue_ms: float
    engine_ms: float


@dataclass
class _Item:
    tensor: np.ndarray  # 3 x h x w float32
    future: asyncio.Future
    deadline: float  # loop.time()
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Job:
    bucket: Shape
    items: list[_Item]


class DynamicBatcher:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 4.0,
        max_queue_images: int = 256,
        bucket_sides: Sequence[int] = (320, 480, 640, 800, 960),
        pad_to_buckets: bool = False,
        pow2_batches: bool = True,
        max_batch_pixels: int = 0,
        engine_workers: int = 1,
        warmup: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
        on_idle: Callable[[], object] | None = None,
        idle_after_s: float = 1.0,
        on_busy: Callable[[], object] | None = None,
        busy_every_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_images = max_queue_images
        self.bucket_sides = sorted(bucket_sides)
        self.pad_to_buckets = pad_to_buckets
        # Engines compile per input shape (oneDNN primitives, cuDNN plans, TensorRT profiles): batches of 1, 2, 4,
        # 8... only keep that set small. A batch takes the largest allowed size that the queue can fill.
        self.batch_sizes = sorted({min(2**i, max_batch_size) for i in range(max_batch_size.bit_length())}
                                  | {max_batch_size}) if pow2_batches else list(range(1, max_batch_size + 1))
        # A batch's activations grow with batch x H x W: this cap bounds the engine's peak memory whatever
        # shapes arrive (0: no cap). A single image always runs, however large.
        self.max_batch_pixels = max_batch_pixels
        self.engine_workers = engine_workers
        self.warmup = warmup
        self.on_batch = on_batch
        # called once each time the batcher has had nothing to do for idle_after_s (e.g. to trim the heap)
        self.on_idle = on_idle
        self.idle_after_s = idle_after_s
        # called on an engine thread after a batch, at most every busy_every_s while batches keep coming (e.g. to
        # trim the heap under steady load, when on_idle never comes)
        self.on_busy = on_busy
        self.busy_every_s = busy_every_s
        self._busy_last = 0.0
        self._idle_done = on_idle is None
        self._pending: dict[Shape, deque[_Item]] = {}
        self._queued = 0
        self._inflight = 0
        self._stopping = False
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._scheduler: asyncio.Task | None = None
        self.warmed_buckets = 0

    # ------------------------------------------------------------------------------------------- lifecycle

    @property
    def buckets(self) -> list[Shape]:
        """The bucket shapes (when padding, the only shapes the engine sees)."""
        return all_buckets(self.bucket_sides)

    @property
    def warmup_shapes(self) -> list[Shape]:
        """What each engine thread runs once before ready. Padded: every bucket, the only shapes it will see.
        Exact: the smallest bucket only, for the engine's one-time set-up. Requests bring their own shapes, and
        warming shapes they never use would fill the engines' per-shape caches (OpenVINO's is an LRU: bucket
        shapes evicted what traffic reuses) and hold memory for nothing."""
        return self.buckets if self.pad_to_buckets else self.buckets[:1]

    def key_for(self, tensor: np.ndarray) -> Shape:
        h, w = tensor.shape[1:]
        return bucket_for(h, w, self.bucket_sides) if self.pad_to_buckets else (h, w)

    @property
    def queue_depth(self) -> int:
        return self._queued

    async def start(self) -> None:
        """Start the engine threads (each warms its predictor on every bucket) and the scheduler."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.engine_workers)
        ready = [self._loop.create_future() for _ in range(self.engine_workers)]
        for i, fut in enumerate(ready):
            thread = threading.Thread(target=self._worker, args=(fut,), name=f"det-engine-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        await asyncio.gather(*ready)
        self._scheduler = asyncio.create_task(self._schedule(), name="det-batcher")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Take no new work, run what is queued, wait up to ``grace_s`` for it, fail whatever is left."""
        if self._stopping:
            return
        self._stopping = True
        if self._scheduler is None:
            return
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._scheduler), grace_s)
            deadline = self._loop.time() + grace_s
            while self._inflight and self._loop.time() < deadline:
                await asyncio.sleep(0.01)
        except TimeoutError:
            self._scheduler.cancel()
        self._fail_pending(ShuttingDown("the service stopped before this image ran"))
        for _ in self._threads:
            self._jobs.put(None)
        await asyncio.to_thread(lambda: [t.join(timeout=grace_s) for t in self._threads])

    # ------------------------------------------------------------------------------------------- requests

    async def infer_many(self, tensors: Sequence[np.ndarray], timeout_s: float) -> list[tuple[np.ndarray, BatchInfo]]:
        """Probability maps (cropped to each tensor's size) for normalised 3 x h x w tensors. All or none are
        admitted: raises QueueFull when they do not fit, ShuttingDown when stopping."""
        if self._stopping or self._scheduler is None:
            raise ShuttingDown("the detection service is not accepting work")
        if self._queued + len(tensors) > self.max_queue_images:
            raise QueueFull(f"{self._queued} images are queued (limit {self.max_queue_images})")
        deadline = self._loop.time() + timeout_s
        items = [_Item(t, self._loop.create_future(), deadline) for t in tensors]
        for item in items:
            self._pending.setdefault(self.key_for(item.tensor), deque()).append(item)
        self._queued += len(items)
        self._wakeup.set()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(i.future for i in items)), timeout_s))
        except TimeoutError as exc:
            raise DeadlineExceeded(f"no result within {timeout_s:.1f} s") from exc

    async def infer(self, tensor: np.ndarray, timeout_s: float) -> tuple[np.ndarray, BatchInfo]:
        return (await self.infer_many([tensor], timeout_s))[0]

    # ------------------------------------------------------------------------------------------- scheduling

    async def _schedule(self) -> None:
        while True:
            await self._slots.acquire()  # a free engine thread first: meanwhile batches keep filling
            job = await self._next_job()
            if job is None:
                self._slots.release()
                return
            self._inflight += 1
            self._jobs.put(job)

    async def _next_job(self) -> _Job | None:
        while True:
            self._drop_expired()
            heads = [(q[0].enqueued, shape) for shape, q in self._pending.items() if q]
            if not heads:
                if self._stopping:
                    return None
                self._wakeup.clear()
                if self._idle_done or self._inflight:
                    await self._wakeup.wait()
                    continue
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.idle_after_s)
                except TimeoutError:
                    if not self._pending and not self._inflight:
                        self._idle_done = True
                        self.on_idle()
                continue
            full = [shape for shape, q in self._pending.items() if len(q) >= self.batch_size_for(shape, 1 << 30)]
            oldest_at, oldest = min(heads)
            shape = full[0] if full else oldest
            wait_s = oldest_at + self.max_delay_s - time.perf_counter()
            if full or wait_s <= 0 or self._stopping:
                return self._take(shape)
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait_s)
            except TimeoutError:
                pass

    def batch_size_for(self, shape: Shape, waiting: int) -> int:
        """The largest allowed batch size that ``waiting`` images of ``shape`` fill within the pixel cap."""
        fits = [n for n in self.batch_sizes if n <= waiting
                and (not self.max_batch_pixels or n * shape[0] * shape[1] <= self.max_batch_pixels)]
        return max(fits, default=1)

    def _take(self, shape: Shape) -> _Job:
        self._idle_done = self.on_idle is None
        q = self._pending[shape]
        size = self.batch_size_for(shape, len(q))
        items = [q.popleft() for _ in range(size)]
        if not q:
            del self._pending[shape]
        self._queued -= len(items)
        return _Job(shape, items)

    def _drop_expired(self) -> None:
        now = self._loop.time()
        for shape in list(self._pending):
            keep: deque[_Item] = deque()
            for item in self._pending[shape]:
                if item.future.done():  # its request timed out or was cancelled
                    self._queued -= 1
                elif item.deadline <= now:
                    item.future.set_exception(DeadlineExceeded("the image waited past its deadline"))
                    self._queued -= 1
                else:
                    keep.append(item)
            if keep:
                self._pending[shape] = keep
            else:
                del self._pending[shape]

    def _fail_pending(self, exc: Exception) -> None:
        for q in self._pending.values():
            for item in q:
                if not item.future.done():
                    item.future.set_exception(exc)
        self._pending.clear()
        self._queued = 0

    # ------------------------------------------------------------------------------------------- engine threads

    def _worker(self, ready: asyncio.Future) -> None:
        try:
            if self.warmup:
                # one image per shape: kernels are picked and compiled (oneDNN primitives, OpenVINO shape
                # caches, cuDNN plans) before /readyz says ready. No full batches: pre-sizing memory pools for
                # the largest shapes would hold that memory for good.
                for h, w in self.warmup_shapes:
                    self.engine.infer(np.zeros((1, 3, h, w), dtype=np.float32))
                    self.warmed_buckets += 1
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        self._loop.call_soon_threadsafe(_settle, ready, True, None)
        while (job := self._jobs.get()) is not None:
            started = time.perf_counter()
            try:
                maps = self.engine.infer(self._assemble(job))
                engine_s = time.perf_counter() - started
                results = [
                    (np.ascontiguousarray(maps[i, : it.tensor.shape[1], : it.tensor.shape[2]]),
                     BatchInfo(len(job.items), (started - it.enqueued) * 1000.0, engine_s * 1000.0))
                    for i, it in enumerate(job.items)
                ]
                error = None
            except Exception as exc:  # noqa: BLE001 - every waiting request gets it
                log.exception("engine failed on a batch of %d at %s", len(job.items), job.bucket)
                results, error, engine_s = None, exc, time.perf_counter() - started
            self._loop.call_soon_threadsafe(self._finish, job, results, error, engine_s)
            if self.on_busy is not None and time.perf_counter() - self._busy_last >= self.busy_every_s:
                self._busy_last = time.perf_counter()
                self.on_busy()

    @staticmethod
    def _assemble(job: _Job) -> np.ndarray:
        """One tensor of the bucket's shape; padding is 0, the value every normalised pixel of mean colour has."""
        h, w = job.bucket
        if all(item.tensor.shape[1:] == (h, w) for item in job.items):  # exact shapes: one copy, or none
            if len(job.items) == 1:
                return job.items[0].tensor[None]
            return np.stack([item.tensor for item in job.items])
        batch = np.zeros((len(job.items), 3, h, w), dtype=np.float32)
        for i, item in enumerate(job.items):
            batch[i, :, : item.tensor.shape[1], : item.tensor.shape[2]] = item.tensor
        return batch

    def _finish(self, job: _Job, results, error: Exception | None, engine_s: float) -> None:
        self._inflight -= 1
        self._slots.release()
        if not self._inflight and not self._idle_done:
            self._wakeup.set()  # the scheduler starts its idle countdown
        if self.on_batch is not None:
            self.on_batch(len(job.items), engine_s)
        for i, item in enumerate(job.items):
            _settle(item.future, None if results is None else results[i], error)


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
