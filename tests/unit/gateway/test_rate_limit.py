"""The per-owner rate limit against the real Redis: exact for small limits and near any limit, counted in the
background far from it, shared by replicas within a bounded overshoot, and never lost when a flush fails."""

import asyncio

import pytest
import redis

from gateway.rate_limit import RateLimiter
from services.jobs.redis_system import AsyncRedisJobSystem
from services.jobs.settings import JobSettings


def _run(redis_url: str, key_prefix: str, body):
    async def main():
        jobs = AsyncRedisJobSystem.from_settings(JobSettings(redis_url=redis_url, key_prefix=key_prefix))
        try:
            return await body(jobs)
        finally:
            await jobs.aclose()

    return asyncio.run(main())


async def _stored(jobs: AsyncRedisJobSystem, limiter: RateLimiter, owner: str) -> int:
    return await jobs.add_rate(owner, limiter._windows[owner].index, 0, limiter.window_s)


def test_a_small_limit_is_counted_exactly_and_per_owner(redis_server, key_prefix):
    async def body(jobs):
        limiter = RateLimiter(jobs, limit=3)
        allowed = [(await limiter.hit("alice")).allowed for _ in range(5)]
        bob = await limiter.hit("bob")
        return allowed, bob, await _stored(jobs, limiter, "alice")

    allowed, bob, stored = _run(redis_server, key_prefix, body)
    assert allowed == [True, True, True, False, False] and bob.allowed and bob.count == 1
    assert stored == 5  # every request, refused ones too, is in the store before it is answered


def test_far_from_the_limit_requests_are_counted_in_the_background(redis_server, key_prefix):
    async def body(jobs):
        limiter = RateLimiter(jobs, limit=600, flush_every_s=0.05)  # up to 30 wait uncounted
        decisions = [await limiter.hit("alice") for _ in range(10)]
        before = await _stored(jobs, limiter, "alice")
        await asyncio.sleep(0.2)
        return decisions, before, await _stored(jobs, limiter, "alice")

    decisions, before, after = _run(redis_server, key_prefix, body)
    assert [d.count for d in decisions] == list(range(1, 11)) and all(d.allowed for d in decisions)
    assert before == 0 and after == 10


def test_replicas_share_the_limit_and_pass_it_by_at_most_their_local_budgets(redis_server, key_prefix):
    async def body(jobs):
        replicas = [RateLimiter(jobs, limit=100, flush_every_s=60) for _ in range(2)]  # no background flush
        allowed = 0
        for i in range(300):
            allowed += (await replicas[i % 2].hit("alice")).allowed
        return allowed, replicas[0].local_budget

    allowed, budget = _run(redis_server, key_prefix, body)
    assert 100 <= allowed <= 100 + 2 * budget


def test_counts_a_failed_flush_could_not_store_are_kept_for_the_next(redis_server, key_prefix):
    async def body(jobs):
        down = AsyncRedisJobSystem.from_settings(JobSettings(redis_url="redis://127.0.0.1:1/0", key_prefix=key_prefix))
        limiter = RateLimiter(down, limit=600, flush_every_s=60)
        try:
            answered = [(await limiter.hit("alice")).allowed for _ in range(3)]  # no Redis needed for these
            await limiter.flush()  # fails, logs, keeps them
            kept = limiter._windows["alice"].pending
            limiter.jobs = jobs  # the store is back
            await limiter.flush()
            return answered, kept, await _stored(jobs, limiter, "alice")
        finally:
            await down.aclose()

    answered, kept, stored = _run(redis_server, key_prefix, body)
    assert answered == [True] * 3 and kept == 3 and stored == 3


def test_near_the_limit_a_store_that_does_not_answer_is_an_error(key_prefix):
    async def main():
        down = AsyncRedisJobSystem.from_settings(JobSettings(redis_url="redis://127.0.0.1:1/0", key_prefix=key_prefix))
        try:
            with pytest.raises(redis.ConnectionError):
                await RateLimiter(down, limit=3).hit("alice")  # limit // 20 == 0: counted in the store first
        finally:
            await down.aclose()

    asyncio.run(main())
