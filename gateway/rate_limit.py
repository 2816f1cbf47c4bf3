"""The per-owner rate limit: fixed windows counted in the job store, so every gateway replica shares them.

Counting each request in Redis before answering it put a round trip on every call: ~1 ms of /detect's gateway
overhead on a busy 2-core machine (tests measured with the count on and off). So a replica counts requests
here and adds them to the store in the background, every `flush_every_s`, while it is far from the limit:

- at most `limit // 20` requests of an owner wait here uncounted in the store; one more is counted in the
  store before it is answered (so limits under 20 are counted exactly as before);
- once the window's count passes 80 % of the limit, every request is counted in the store before it is answered.

Across R replicas a burst inside one flush interval can pass the limit by at most R x limit/20; one replica
alone counts every request it answers. A flush that fails (Redis down) keeps its counts for the next one.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

import redis

from services.jobs.interface import AsyncJobSystem, RateDecision

log = logging.getLogger(__name__)


@dataclass
class _Window:
    index: int  # time // window_s
    known: int = 0  # the count in the store (every replica's requests) when this replica last added to it
    pending: int = 0  # requests counted here, not yet in the store


class RateLimiter:
    def __init__(self, jobs: AsyncJobSystem, limit: int, window_s: int = 60, flush_every_s: float = 0.2) -> None:
        self.jobs, self.limit, self.window_s, self.flush_every_s = jobs, limit, window_s, flush_every_s
        self.local_budget = limit // 20
        self.exact_from = limit * 4 // 5
        self._windows: dict[str, _Window] = {}
        self._flusher: asyncio.Task | None = None

    async def hit(self, owner: str) -> RateDecision:
        """Count one request of `owner`; `allowed` is False over the limit (the request is counted either way)."""
        now = time.time()
        index = int(now // self.window_s)
        window = self._windows.get(owner)
        if window is None or window.index != index:  # a past window's uncounted requests no longer decide anything
            window = self._windows[owner] = _Window(index)
        window.pending += 1
        count = window.known + window.pending
        if window.pending > self.local_budget or count > self.exact_from:
            await self._add(owner, window)  # a store that does not answer is a 503, as for every job call
            count = window.known
        else:
            self._flush_soon()
        retry = max(1, int((index + 1) * self.window_s - now) + 1)
        return RateDecision(allowed=count <= self.limit, count=count, limit=self.limit, retry_after_s=retry)

    async def _add(self, owner: str, window: _Window) -> None:
        requests, window.pending = window.pending, 0
        try:
            total = await self.jobs.add_rate(owner, window.index, requests, self.window_s)
        except BaseException:
            window.pending += requests  # added with the next flush
            raise
        window.known = max(window.known, total)  # two adds in flight may answer out of order

    def _flush_soon(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_after_delay(), name="rate-limit-flush")

    async def _flush_after_delay(self) -> None:
        # one task at a time, until nothing waits: requests counted while it flushes (or after a failed flush)
        # are taken by its next round
        while True:
            await asyncio.sleep(self.flush_every_s)
            await self.flush()
            if not any(w.pending for w in self._windows.values()):
                return

    async def flush(self) -> None:
        """Add every owner's uncounted requests to the store; forget windows that have ended."""
        index = int(time.time() // self.window_s)
        for owner, window in list(self._windows.items()):
            if window.index != index:
                del self._windows[owner]
            elif window.pending:
                try:
                    await self._add(owner, window)
                except redis.RedisError as e:
                    log.warning("rate counts not saved (kept for the next flush): %s", type(e).__name__)
                    return

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            await self.flush()
        except redis.RedisError:
            pass  # shutting down: a few uncounted requests in a window that is ending anyway
