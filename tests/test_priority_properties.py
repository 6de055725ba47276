"""Property tests of the ordering rules on random mixes of priorities, types and arrival order,
against the real Redis scripts."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from app.models.task import ReadyTask
from app.services.message_queue import RedisQueue
from app.utils.embedded_servers import ValkeyServer

arrivals = st.lists(
    st.tuples(st.integers(min_value=1, max_value=10), st.sampled_from(["echo", "sleep", "cpu"])),
    min_size=1,
    max_size=40,
)


def _run(
    valkey: ValkeyServer, scenario: list[tuple[int, str]], take: list[int]
) -> tuple[list[str], list[str]]:
    async def go() -> tuple[list[str], list[str]]:
        redis = Redis.from_url(valkey.url)
        try:
            await redis.flushall()
            queue = RedisQueue(redis, prefix="prop")
            for n, (priority, task_type) in enumerate(scenario):
                await queue.enqueue([ReadyTask(f"t{n:03d}", task_type, priority)])
            claimed: list[str] = []
            for count in take:
                claimed += await queue.claim("w", ["echo", "sleep", "cpu"], count)
            claimed += await queue.claim("w", ["echo", "sleep", "cpu"], len(scenario))
            # Expected: highest priority first, then arrival order, whatever the task type.
            expected = [
                f"t{n:03d}" for n, _ in sorted(enumerate(scenario), key=lambda x: (-x[1][0], x[0]))
            ]
            return claimed, expected
        finally:
            await redis.aclose()

    # A thread of its own: asyncio.run here would replace the event loop the async tests share.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario=arrivals, take=st.lists(st.integers(min_value=1, max_value=5), max_size=5))
def test_claims_follow_priority_then_fifo_across_types(
    isolated_valkey: ValkeyServer, scenario: list[tuple[int, str]], take: list[int]
) -> None:
    claimed, expected = _run(isolated_valkey, scenario, take)
    assert claimed == expected


timed_arrivals = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=5_000_000)
    ),
    min_size=1,
    max_size=30,
)


def _run_aged(
    valkey: ValkeyServer, scenario: list[tuple[int, int]], aging_seconds: float
) -> list[str]:
    async def go() -> list[str]:
        redis = Redis.from_url(valkey.url)
        try:
            await redis.flushall()
            queue = RedisQueue(redis, prefix="aged", aging_seconds=aging_seconds)
            base = 1_700_000_000_000_000
            for n, (priority, arrival_us) in enumerate(scenario):
                await queue.enqueue(
                    [ReadyTask(f"t{n:03d}", "echo", priority)], now_us=base + arrival_us
                )
            return await queue.claim("w", ["echo"], len(scenario))
        finally:
            await redis.aclose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario=timed_arrivals, aging_seconds=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_aging_orders_by_effective_priority(
    isolated_valkey: ValkeyServer, scenario: list[tuple[int, int]], aging_seconds: float
) -> None:
    """A task waiting `aging_seconds` longer is worth one priority level more; 0 means strict."""
    claimed = _run_aged(isolated_valkey, scenario, aging_seconds)
    band = aging_seconds * 1_000_000 if aging_seconds else 10**13

    def effective(n: int) -> tuple[float, str]:
        priority, arrival = scenario[n]
        return ((10 - priority) * band + arrival, f"t{n:03d}")  # Redis breaks ties by member

    assert claimed == [f"t{n:03d}" for n in sorted(range(len(scenario)), key=effective)]
