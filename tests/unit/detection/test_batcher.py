import asyncio
import threading
import time

import numpy as np
import pytest

from services.detection.batcher import (
    DeadlineExceeded,
    DynamicBatcher,
    QueueFull,
    ShuttingDown,
    all_buckets,
    bucket_for,
)
from services.detection.engines.base import Engine


class MeanEngine(Engine):
    """Prob map = channel mean (a per-pixel function, so padding cannot leak). Records every batch shape."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.calls: list[tuple[int, ...]] = []
        self.threads: set[str] = set()

    def load(self, buckets, max_batch_size):
        pass

    def infer(self, batch):
        self.calls.append(batch.shape)
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.fail and batch.shape[2] == 64 and batch.any():  # warm-up (zeros) passes, real 64-high batches fail
            raise RuntimeError("engine exploded")
        return batch.mean(axis=1)


def tensor(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, h, w)).astype(np.float32)


def run(coro):
    return asyncio.run(coro)


def test_bucket_for():
    sides = [320, 640, 960]
    assert bucket_for(32, 32, sides) == (320, 320)
    assert bucket_for(320, 352, sides) == (320, 640)
    assert bucket_for(960, 96, sides) == (960, 320)
    assert bucket_for(1000, 2000, sides) == (1024, 2048)  # beyond the last bucket: multiples of 256
    assert len(all_buckets(sides)) == 9


def test_padded_mode_warms_every_bucket_on_every_engine_thread_one_image_each():
    engine = MeanEngine()

    async def main():
        b = DynamicBatcher(engine, bucket_sides=[32, 64], engine_workers=2, pad_to_buckets=True)
        await b.start()
        await b.stop()
        return b

    b = run(main())
    # each thread: batch 1 of every bucket, and no full batch (that would pre-size memory pools for good)
    expected = [(1, 3, h, w) for h, w in all_buckets([32, 64])]
    assert sorted(engine.calls) == sorted(expected * 2)
    assert b.warmed_buckets == 8 and len(engine.threads) == 2


def test_exact_mode_warms_only_the_smallest_bucket():
    """Exact shapes come from the requests: warming bucket shapes they never use would only fill the engines'
    per-shape caches and hold memory."""
    engine = MeanEngine()

    async def main():
        b = DynamicBatcher(engine, bucket_sides=[64, 32], engine_workers=2)
        await b.start()
        await b.stop()
        return b

    b = run(main())
    assert engine.calls == [(1, 3, 32, 32)] * 2
    assert b.warmup_shapes == [(32, 32)] and b.warmed_buckets == 2


def test_batch_pixel_cap_bounds_every_batch():
    engine = MeanEngine(delay_s=0.05)
    shapes = [(64, 64)] * 8 + [(128, 128)] * 3

    async def main():
        b = DynamicBatcher(engine, max_batch_size=8, max_queue_delay_ms=50, bucket_sides=[32], warmup=False,
                           max_batch_pixels=4 * 64 * 64)
        assert b.batch_size_for((64, 64), 100) == 4 and b.batch_size_for((128, 128), 100) == 1
        assert b.batch_size_for((256, 256), 5) == 1  # a single image over the cap still runs
        await b.start()
        results = await asyncio.gather(*(b.infer(tensor(h, w, i), 10) for i, (h, w) in enumerate(shapes)))
        await b.stop()
        return results

    results = run(main())
    assert [r[0].shape for r in results] == shapes
    assert all(n * h * w <= 4 * 64 * 64 for n, _, h, w in engine.calls)
    assert max(n for n, _, h, w in engine.calls if h == 64) == 4  # the cap, not the max batch size, bounds it


def test_concurrent_images_share_batches_and_results_are_cropped_back():
    engine = MeanEngine(delay_s=0.02)
    shapes = [(64, 96), (96, 64), (32, 32), (128, 128), (64, 64)] * 4

    async def main():
        b = DynamicBatcher(engine, max_batch_size=4, max_queue_delay_ms=20, bucket_sides=[64, 128], warmup=False,
                           pad_to_buckets=True)
        await b.start()
        tensors = [tensor(h, w, i) for i, (h, w) in enumerate(shapes)]
        results = await asyncio.gather(*(b.infer(t, 10) for t in tensors))
        await b.stop()
        return tensors, results

    tensors, results = run(main())
    for t, (prob, info) in zip(tensors, results):
        np.testing.assert_allclose(prob, t.mean(axis=0), rtol=1e-6)  # cropped to its own size
        assert 1 <= info.batch_size <= 4
    batch_sizes = [c[0] for c in engine.calls]
    assert max(batch_sizes) == 4 and len(engine.calls) < len(shapes)
    assert all(c[2:] in [(64, 64), (64, 128), (128, 64), (128, 128)] for c in engine.calls)


def test_padding_is_zero():
    seen = []

    class Spy(MeanEngine):
        def infer(self, batch):
            seen.append(batch.copy())
            return super().infer(batch)

    async def main():
        b = DynamicBatcher(Spy(), bucket_sides=[64], warmup=False, pad_to_buckets=True)
        await b.start()
        await b.infer(np.ones((3, 32, 32), np.float32), 5)
        await b.stop()

    run(main())
    (batch,) = seen
    assert batch.shape == (1, 3, 64, 64) and batch[0, :, :32, :32].min() == 1 and batch[0, :, 32:, :].max() == 0


def test_queue_full_is_all_or_nothing():
    engine = MeanEngine(delay_s=0.3)

    async def main():
        b = DynamicBatcher(engine, max_batch_size=1, max_queue_images=3, bucket_sides=[32], warmup=False)
        await b.start()
        first = asyncio.create_task(b.infer(tensor(32, 32), 10))  # goes to the engine
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.infer_many([tensor(32, 32)] * 2, 10))  # waits: 2 of 3 places
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.infer_many([tensor(32, 32)] * 2, 10)  # would make 4
        assert b.queue_depth == 2
        await asyncio.gather(first, queued)
        await b.stop()

    run(main())


def test_deadline():
    engine = MeanEngine(delay_s=0.3)

    async def main():
        b = DynamicBatcher(engine, max_batch_size=1, bucket_sides=[32], warmup=False)
        await b.start()
        slow = asyncio.create_task(b.infer(tensor(32, 32), 10))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await b.infer(tensor(32, 32), 0.1)
        await slow
        assert b.queue_depth == 0
        await b.stop()

    run(main())


def test_engine_error_reaches_every_request_and_the_batcher_keeps_going():
    engine = MeanEngine(fail=True)

    async def main():
        b = DynamicBatcher(engine, bucket_sides=[32, 64], max_queue_delay_ms=20)
        await b.start()
        outcomes = await asyncio.gather(*(b.infer(tensor(64, 64, i), 5) for i in range(3)), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        prob, _ = await b.infer(tensor(32, 32), 5)  # same engine, a shape that works
        assert prob.shape == (32, 32)
        await b.stop()

    run(main())


def test_stop_finishes_queued_work_then_refuses_new():
    engine = MeanEngine(delay_s=0.05)

    async def main():
        b = DynamicBatcher(engine, max_batch_size=2, bucket_sides=[32], warmup=False)
        await b.start()
        tasks = [asyncio.create_task(b.infer(tensor(32, 32, i), 10)) for i in range(6)]
        await asyncio.sleep(0.01)
        await b.stop(grace_s=5)
        results = await asyncio.gather(*tasks)
        assert len(results) == 6
        with pytest.raises(ShuttingDown):
            await b.infer(tensor(32, 32), 1)

    run(main())


def test_stop_fails_what_cannot_finish_in_time():
    engine = MeanEngine(delay_s=0.5)

    async def main():
        b = DynamicBatcher(engine, max_batch_size=1, bucket_sides=[32], warmup=False)
        await b.start()
        tasks = [asyncio.create_task(b.infer(tensor(32, 32, i), 10)) for i in range(4)]
        await asyncio.sleep(0.05)
        await b.stop(grace_s=0.2)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(o, ShuttingDown) for o in outcomes)

    run(main())


def test_exact_mode_batches_only_identical_shapes_without_padding():
    engine = MeanEngine(delay_s=0.02)
    shapes = [(64, 96), (96, 64), (64, 96), (64, 96), (96, 64), (32, 32)]

    async def main():
        b = DynamicBatcher(engine, max_batch_size=8, max_queue_delay_ms=30, bucket_sides=[128], warmup=False)
        await b.start()
        results = await asyncio.gather(*(b.infer(tensor(h, w, i), 10) for i, (h, w) in enumerate(shapes)))
        await b.stop()
        return results

    results = run(main())
    assert sorted(engine.calls) == sorted([(2, 3, 64, 96), (1, 3, 64, 96), (2, 3, 96, 64), (1, 3, 32, 32)])
    assert [r[0].shape for r in results] == shapes


def test_batch_sizes_are_powers_of_two_by_default():
    engine = MeanEngine(delay_s=0.05)

    async def main():
        b = DynamicBatcher(engine, max_batch_size=8, max_queue_delay_ms=50, bucket_sides=[32], warmup=False)
        assert b.batch_sizes == [1, 2, 4, 8]
        await b.start()
        await asyncio.gather(*(b.infer(tensor(32, 32, i), 10) for i in range(7)))
        await b.stop()

    run(main())
    assert sorted(c[0] for c in engine.calls) == [1, 2, 4]  # 7 queued: 4 + 2 + 1
    assert DynamicBatcher(MeanEngine(), max_batch_size=6).batch_sizes == [1, 2, 4, 6]
    assert DynamicBatcher(MeanEngine(), max_batch_size=3, pow2_batches=False).batch_sizes == [1, 2, 3]


def test_on_idle_runs_once_per_quiet_spell():
    engine = MeanEngine(delay_s=0.01)
    idle: list[float] = []

    async def main():
        b = DynamicBatcher(engine, bucket_sides=[32], warmup=False, on_idle=lambda: idle.append(time.monotonic()),
                           idle_after_s=0.1)
        await b.start()
        await asyncio.sleep(0.35)
        assert len(idle) == 1  # after start (warm-up memory), once, not every 0.1 s
        await b.infer(tensor(32, 32), 5)
        await asyncio.sleep(0.05)
        assert len(idle) == 1  # not before the quiet spell
        await asyncio.sleep(0.3)
        assert len(idle) == 2
        await b.stop()

    run(main())


def test_on_busy_runs_under_steady_load_at_most_every_interval():
    engine = MeanEngine(delay_s=0.02)
    busy: list[float] = []

    async def main():
        b = DynamicBatcher(engine, bucket_sides=[32], warmup=False, on_busy=lambda: busy.append(time.monotonic()),
                           busy_every_s=0.1)
        await b.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.55:  # batches back to back: never idle
            await b.infer(tensor(32, 32), 5)
        await b.stop()

    run(main())
    assert len(engine.calls) >= 10
    assert 3 <= len(busy) <= 7, busy  # not after every batch, and not only once idle
    assert all(b - a >= 0.099 for a, b in zip(busy, busy[1:]))
