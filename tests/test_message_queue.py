"""The Redis transport against a real Valkey server: ordering, atomic claims, leases, delays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from app.models.task import ReadyTask
from app.services.message_queue import RedisQueue


def _queue(redis: Redis, **options: float) -> RedisQueue:
    return RedisQueue(redis, prefix="tq", **options)


async def test_claims_take_highest_priority_first_then_fifo(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    order = [("a", 1), ("b", 5), ("c", 10), ("d", 5), ("e", 10), ("f", 1)]
    for task_id, priority in order:
        await queue.enqueue([ReadyTask(task_id, "echo", priority)])
    claimed = await queue.claim("w", ["echo"], 10)
    assert claimed == ["c", "e", "b", "d", "a", "f"]


async def test_priority_is_global_across_task_types(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    await queue.enqueue([ReadyTask("low", "echo", 2), ReadyTask("high", "sleep", 9)])
    assert await queue.claim("w", ["echo", "sleep"], 1) == ["high"]


async def test_claim_takes_only_the_requested_count_and_capable_types(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    await queue.enqueue(
        [ReadyTask(f"t{i}", "echo", 1) for i in range(5)] + [ReadyTask("x", "cpu", 10)]
    )
    assert len(await queue.claim("w", ["echo"], 2)) == 2
    assert await queue.queue_depths() == {"echo": 3, "cpu": 1}


async def test_concurrent_claims_never_hand_out_a_task_twice(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    await queue.enqueue([ReadyTask(f"t{i}", "echo", 1 + i % 10) for i in range(300)])
    results = await asyncio.gather(*(queue.claim(f"w{i}", ["echo"], 7) for i in range(60)))
    claimed = [task_id for batch in results for task_id in batch]
    assert len(claimed) == len(set(claimed)) == 300


async def test_enqueue_skips_a_task_that_holds_a_lease(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    await queue.enqueue([ReadyTask("t", "echo", 1)])
    assert await queue.claim("w", ["echo"], 1) == ["t"]
    await queue.enqueue([ReadyTask("t", "echo", 1)])  # e.g. a reconciliation racing the run
    assert await queue.queue_depths() == {}


async def test_renew_and_release_respect_the_owner(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    await queue.enqueue([ReadyTask("t", "echo", 1)])
    await queue.claim("w1", ["echo"], 1)
    assert await queue.renew([("t", "w2#0")]) == ["t"]  # not w2's: reported as not held
    assert await queue.renew([("t", "w1#0")]) == []
    await queue.release([("t", "w2#0")])
    assert await redis_client.zscore(queue.keys.active, "t") is not None
    await queue.release([("t", "w1#0")])
    assert await redis_client.zscore(queue.keys.active, "t") is None


async def test_expired_leases_are_reported_with_their_owner(redis_client: Redis) -> None:
    queue = _queue(redis_client, lease_seconds=0.05)
    await queue.enqueue([ReadyTask("t", "echo", 1)])
    await queue.claim("w1", ["echo"], 1)
    deadline = asyncio.get_running_loop().time() + 5
    while not (expired := await queue.expired_leases()):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert expired == [("t", "w1#0")]


async def test_requeue_moves_a_task_from_its_lease_back_to_the_queue(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    await queue.enqueue([ReadyTask("t", "echo", 3)])
    await queue.claim("w1", ["echo"], 1)
    await queue.requeue(ReadyTask("t", "echo", 3))
    assert await queue.claim("w2", ["echo"], 1) == ["t"]
    assert await redis_client.hget(queue.keys.owners, "t") == b"w2#0"


async def test_delayed_tasks_wait_until_due(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    soon = datetime.now(UTC) + timedelta(milliseconds=200)
    await queue.enqueue([ReadyTask("later", "echo", 5, soon)])
    await queue.promote_due()
    assert await queue.claim("w", ["echo"], 1) == []
    deadline = asyncio.get_running_loop().time() + 5
    while await queue.promote_due() == 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert datetime.now(UTC) >= soon
    assert await queue.claim("w", ["echo"], 1) == ["later"]


async def test_aging_lets_an_old_low_priority_task_overtake(redis_client: Redis) -> None:
    queue = _queue(redis_client, aging_seconds=0.05)  # one level per 50 ms of waiting
    await queue.enqueue([ReadyTask("old-low", "echo", 1)])
    await asyncio.sleep(0.6)  # the wait being aged is the point here, not synchronisation
    await queue.enqueue([ReadyTask("new-high", "echo", 10)])
    assert await queue.claim("w", ["echo"], 1) == ["old-low"]


async def test_pop_wake_wakes_on_enqueue(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    waiter = asyncio.create_task(queue.pop_wake(["echo"], timeout=10))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    await queue.enqueue([ReadyTask("t", "echo", 1)])
    await asyncio.wait_for(waiter, 5)
    assert asyncio.get_running_loop().time() - started < 5


async def test_is_known_sees_queued_leased_and_delayed_tasks(redis_client: Redis) -> None:
    queue = _queue(redis_client)
    later = datetime.now(UTC) + timedelta(hours=1)
    await queue.enqueue(
        [ReadyTask("q", "echo", 1), ReadyTask("l", "echo", 1), ReadyTask("d", "echo", 1, later)]
    )
    await queue.claim("w", ["echo"], 1)  # takes "q" or "l": both are known either way
    known = await queue.is_known(
        [
            ReadyTask("q", "echo", 1),
            ReadyTask("l", "echo", 1),
            ReadyTask("d", "echo", 1, later),
            ReadyTask("ghost", "echo", 1),
        ]
    )
    assert known == [True, True, True, False]


async def _flood(queue: RedisQueue, *, seconds: float) -> tuple[list[str], dict[str, float], float]:
    """Enqueue priority-10 tasks twice as fast as one worker claims them, after one priority-1
    task; returns the claim order, each task's enqueue time, and when the low task was queued."""
    loop = asyncio.get_running_loop()
    enqueued = {"low": loop.time()}
    await queue.enqueue([ReadyTask("low", "echo", 1)])
    claimed: list[str] = []
    n = 0
    end = loop.time() + seconds
    while loop.time() < end and "low" not in claimed:
        for _ in range(2):
            enqueued[f"hi{n}"] = loop.time()
            await queue.enqueue([ReadyTask(f"hi{n}", "echo", 10)])
            n += 1
        claimed += await queue.claim("w", ["echo"], 1)
        await asyncio.sleep(0.005)  # paces the flood; the property below does not depend on it
    return claimed, enqueued, enqueued["low"]


async def test_aging_bounds_the_wait_of_a_low_priority_task_under_a_flood(
    redis_client: Redis,
) -> None:
    aging = 0.1  # one priority level per 100 ms of waiting
    claimed, enqueued, low_at = await _flood(_queue(redis_client, aging_seconds=aging), seconds=20)
    assert "low" in claimed, "the priority-1 task starved"
    # The documented bound: only tasks queued less than (10 - 1) * aging after it overtake it.
    overtakers = claimed[: claimed.index("low")]
    assert overtakers, "the flood should have overtaken it for a while"
    assert max(enqueued[t] for t in overtakers) <= low_at + 9 * aging + 0.05


async def test_without_aging_a_flood_of_high_priority_work_always_goes_first(
    redis_client: Redis,
) -> None:
    claimed, _enqueued, _low_at = await _flood(_queue(redis_client), seconds=1.5)
    assert claimed and "low" not in claimed
