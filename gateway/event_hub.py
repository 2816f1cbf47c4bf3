"""One reader per followed job, many streams: a job's events are read from the job system once per gateway
process and handed to every open stream of that job.

A thousand streams on twenty jobs are twenty blocking reads, not a thousand; a stream costs a queue. A new
stream first reads what it missed (after its Last-Event-ID) itself, then takes the shared feed, skipping
what it already has, so resuming stays exact. A stream too slow to keep up is told so and catches up from
the job system the same way.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from services.contracts.jobs import JobStatus
from services.jobs.interface import AsyncJobSystem, Event, JobNotFound

KEEP_ALIVE = None  # what a stream gets when nothing happened for one read's wait
_END = "end"
_TERMINAL = {s.value for s in JobStatus if s.terminal}
_QUEUE = 256


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _ends(events: list[Event]) -> bool:
    return any(e.event == "status" and e.data.get("status") in _TERMINAL for e in events)


class _Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(_QUEUE)
        self.lagged = False

    def offer(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lagged = True  # it re-reads from the job system what it missed
            if isinstance(item, list) or item is KEEP_ALIVE:
                return
            while not self.queue.empty():  # the end (or an error) must arrive: it replaces what is queued
                self.queue.get_nowait()
            self.queue.put_nowait(item)


class _Feed:
    def __init__(self, hub: "JobEventHub", job_id: str):
        self.hub, self.job_id = hub, job_id
        self.subscribers: set[_Subscriber] = set()
        self.task: asyncio.Task | None = None
        # set once the feed knows where it starts (or failed to): a stream reads its own backlog only after,
        # so nothing falls between what it read and what the feed delivers
        self.started = asyncio.Event()

    def broadcast(self, item) -> None:
        for sub in list(self.subscribers):
            sub.offer(item)

    async def run(self) -> None:
        jobs = self.hub.jobs
        try:
            # the feed starts where the job's stream is now: everything after is the feed's to deliver
            existing = await jobs.events(self.job_id, after="0-0", count=10_000)
            cursor = existing[-1].id if existing else "0-0"
            self.started.set()
            while True:
                events = await jobs.events(self.job_id, after=cursor, block_ms=self.hub.wait_ms)
                if events:
                    cursor = events[-1].id
                    self.broadcast(events)
                    if _ends(events):
                        break
                    continue
                try:
                    job = await jobs.get(self.job_id)
                except JobNotFound:
                    break
                if job.status.terminal and not await jobs.events(self.job_id, after=cursor):
                    break
                self.broadcast(KEEP_ALIVE)
        except Exception as e:  # e.g. Redis went away: every stream ends; clients resume with Last-Event-ID
            self.broadcast(e)
            self.hub._drop(self)
            return
        finally:
            self.started.set()  # never leave a joining stream waiting
        self.broadcast(_END)
        self.hub._drop(self)


class JobEventHub:
    def __init__(self, jobs: AsyncJobSystem, wait_ms: int = 5000):
        self.jobs = jobs
        self.wait_ms = wait_ms
        self._feeds: dict[str, _Feed] = {}

    async def follow(self, job_id: str, after: str = "0-0") -> AsyncIterator[Event | None]:
        """The job's events after `after` until it ends; `KEEP_ALIVE` (None) when a wait passed quietly."""
        sub = _Subscriber()
        feed = await self._join(job_id, sub)
        try:
            last = after
            while True:
                if sub.lagged:  # the feed dropped some: read them from the job system
                    sub.lagged = False
                    missed = await self._backlog(job_id, last)
                    for e in missed:
                        last = e.id
                        yield e
                    if _ends(missed):
                        return
                item = await sub.queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                if item is KEEP_ALIVE:
                    yield KEEP_ALIVE
                    continue
                fresh = [e for e in item if _order(e.id) > _order(last)]
                for e in fresh:
                    last = e.id
                    yield e
                if _ends(fresh):
                    return
        finally:
            feed.subscribers.discard(sub)
            if not feed.subscribers:
                self._drop(feed)

    async def _join(self, job_id: str, sub: _Subscriber) -> _Feed:
        # no await between looking the feed up and registering a new one: streams of one job that arrive
        # together share one feed (awaiting in between once gave each its own, hundreds of readers per job)
        feed = self._feeds.get(job_id)
        if feed is None or feed.task is None or feed.task.done():
            feed = self._feeds[job_id] = _Feed(self, job_id)
            feed.task = asyncio.create_task(feed.run())
        feed.subscribers.add(sub)
        try:
            await feed.started.wait()
        except BaseException:  # the stream went away while its feed was starting
            feed.subscribers.discard(sub)
            if not feed.subscribers:
                self._drop(feed)
            raise
        sub.lagged = True  # read the backlog first: everything up to where the feed started
        return feed

    async def _backlog(self, job_id: str, after: str) -> list[Event]:
        out: list[Event] = []
        while True:
            page = await self.jobs.events(job_id, after=after, count=500)
            out += page
            if len(page) < 500:
                return out
            after = page[-1].id

    def _drop(self, feed: _Feed) -> None:
        feed.started.set()
        if self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]
        if feed.task is not None and not feed.task.done() and asyncio.current_task() is not feed.task:
            feed.task.cancel()

    async def aclose(self) -> None:
        for feed in list(self._feeds.values()):
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feed.task
        self._feeds.clear()
