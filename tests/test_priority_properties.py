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
