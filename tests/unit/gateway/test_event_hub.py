"""Many streams of one job share one reader; each still gets exactly the events after its own resume point."""

import asyncio

from gateway.event_hub import KEEP_ALIVE, JobEventHub
from services.contracts.jobs import JobStatus, JobType, Progress
from services.jobs.redis_system import AsyncRedisJobSystem, RedisJobSystem
from services.jobs.settings import JobSettings


async def _collect(hub: JobEventHub, job_id: str, after: str) -> list[str]:
    return [e.id for e in [x async for x in hub.follow(job_id, after=after)] if e is not KEEP_ALIVE]


def test_streams_share_one_reader_and_resume_exactly(redis_server, key_prefix):
    settings = JobSettings(redis_url=redis_server, key_prefix=key_prefix)
    store = RedisJobSystem.from_settings(settings)
    job, _ = store.create(JobType.finetune, "alice", {})
    store.transition(job.id, JobStatus.running)
    store.report_progress(job.id, Progress(step=1, total=3))
    before = [e.id for e in store.events(job.id)]  # queued, running, progress 1

    async def main():
        jobs = AsyncRedisJobSystem.from_settings(settings)
        hub = JobEventHub(jobs, wait_ms=300)
        try:
            # streams that arrive together (the first one's reader still starting) share it too
            followers = [asyncio.create_task(_collect(hub, job.id, after)) for after in
                         ("0-0", before[0], before[-1], before[-1], *["0-0"] * 40)]
            await asyncio.sleep(0.5)
            readers = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_Feed.run"]
            assert len(readers) == 1 and len(hub._feeds) == 1  # 44 streams, one reader
            for step in (2, 3):
                await asyncio.to_thread(store.report_progress, job.id, Progress(step=step, total=3))
            await asyncio.sleep(0.5)  # a quiet wait in between: keep-alives, then more events
            await asyncio.to_thread(store.transition, job.id, JobStatus.succeeded, result={})
            got = await asyncio.wait_for(asyncio.gather(*followers), 10)
            assert hub._feeds == {}  # the reader ends with the job
            return got
        finally:
            await hub.aclose()
            await jobs.aclose()

    got = asyncio.run(main())
    every = [e.id for e in store.events(job.id)]
    assert len(every) == 6
    assert got[0] == every and got[1] == every[1:] and got[2] == got[3] == every[3:]
    assert all(g == every for g in got[4:])


def test_a_stream_of_a_finished_job_gets_its_events_and_ends(redis_server, key_prefix):
    settings = JobSettings(redis_url=redis_server, key_prefix=key_prefix)
    store = RedisJobSystem.from_settings(settings)
    job, _ = store.create(JobType.generate, "alice", {})
    store.transition(job.id, JobStatus.canceled)

    async def main():
        jobs = AsyncRedisJobSystem.from_settings(settings)
        hub = JobEventHub(jobs, wait_ms=300)
        try:
            return await asyncio.wait_for(_collect(hub, job.id, "0-0"), 10)
        finally:
            await hub.aclose()
            await jobs.aclose()

    assert asyncio.run(main()) == [e.id for e in store.events(job.id)]
