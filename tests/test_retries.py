"""Retry accounting and deadlines (docs/architecture.md, "Retries"), against real Redis and a real
database: lost workers do not use up error retries but have their own cap, backoff counts from
the last manual retry, a task never starts before it is due, and the server ends attempts that
overrun their timeout whatever their worker does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from redis.asyncio.client import PubSub
from sqlalchemy import update

from app.database.tables import tasks
from app.models.task import AttemptOutcome, ReadyTask
from app.services.retry_policy import RetryPolicy
from tests.conftest import Services
from tests.test_scheduler import expire_lease, get, report, run_next, submit


async def lose_worker(services: Services, task_id: str, worker: str) -> int:
    """Start the task on `worker` and let its lease expire into a sweep; returns the attempt."""
    ((started, attempt),) = await run_next(services, worker)
    assert started == task_id
    await expire_lease(services, task_id)
    assert await services.recovery.sweep_expired() == 1
    return attempt


async def start_when_due(services: Services, worker: str) -> list[tuple[str, int]]:
    deadline = asyncio.get_running_loop().time() + 10
    while not (started := await run_next(services, worker)):
        assert asyncio.get_running_loop().time() < deadline, "the retry never became due"
        await services.queue.promote_due()
        await asyncio.sleep(0.02)
    return started


def test_the_policy_counts_errors_and_lost_workers_apart() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0, max_losses=2)
    lost, error = AttemptOutcome.WORKER_LOST, AttemptOutcome.ERROR
    assert policy.delay(lost, errors=5, losses=1, max_retries=0) == 0.0
    assert policy.delay(lost, errors=0, losses=2, max_retries=9) is None
    first = policy.delay(error, errors=0, losses=9, max_retries=1)
    assert first is not None and 0.5 <= first <= 1.0
    assert policy.delay(error, errors=1, losses=0, max_retries=1) is None
    assert policy.delay(AttemptOutcome.RELEASED, errors=0, losses=0, max_retries=3) is None


async def test_lost_workers_do_not_use_up_the_error_retries(services: Services) -> None:
    await submit(services, "t1", max_retries=1)
    for n in (1, 2, 3):
        assert await lose_worker(services, "t1", f"w{n}") == n
    ((_, attempt),) = await run_next(services, "w4")
    await services.scheduler.report("w4", [report("t1", attempt, AttemptOutcome.ERROR)])
    assert (await get(services, "t1")).status == "pending"  # its one error retry is left
    ((_, attempt),) = await start_when_due(services, "w5")
    await services.scheduler.report("w5", [report("t1", attempt, AttemptOutcome.ERROR)])
    task = await get(services, "t1")
    assert task.status == "failed"
    assert [a.outcome for a in task.attempts or []] == [
        *["worker_lost"] * 3,
        "error",
        "error",
    ]


async def test_a_task_that_kills_every_worker_fails_after_the_loss_cap(
    services: Services,
) -> None:
    services.scheduler.retry_policy = RetryPolicy(base=0.05, cap=0.1, max_losses=2)
    await submit(services, "poison", max_retries=5)
    for n in (1, 2, 3):
        await lose_worker(services, "poison", f"w{n}")
    task = await get(services, "poison")
    assert task.status == "failed"
    assert task.error == "worker lost: lease of worker 'w3' expired"
    assert [a.outcome for a in task.attempts or []] == ["worker_lost"] * 3
    assert await run_next(services, "w4") == []


async def test_backoff_after_a_manual_retry_starts_small_again(services: Services) -> None:
    services.scheduler.retry_policy = RetryPolicy(base=0.05, cap=1000.0, max_losses=5)
    await submit(services, "t1", max_retries=3)
    for _ in range(4):
        ((_, attempt),) = await start_when_due(services, "w1")
        await services.scheduler.report("w1", [report("t1", attempt, AttemptOutcome.ERROR)])
    assert (await get(services, "t1")).status == "failed"
    await services.scheduler.retry("t1")
    ((_, attempt),) = await start_when_due(services, "w1")
    reported_at = datetime.now(UTC)
    await services.scheduler.report("w1", [report("t1", attempt, AttemptOutcome.ERROR)])
    task = await get(services, "t1")
    assert task.status == "pending" and task.scheduled_at is not None
    # The first retry's backoff (base), not the fifth's (16 x base).
    assert task.scheduled_at - reported_at <= timedelta(seconds=0.05 + 0.01)


async def test_a_stray_queue_entry_does_not_start_a_task_in_its_backoff(
    services: Services,
) -> None:
    services.scheduler.retry_policy = RetryPolicy(base=600.0, cap=600.0, max_losses=5)
    await submit(services, "t1", max_retries=3)
    ((_, attempt),) = await run_next(services, "w1")
    await services.scheduler.report("w1", [report("t1", attempt, AttemptOutcome.ERROR)])
    await services.queue.enqueue([ReadyTask("t1", "echo", 1)])  # e.g. a reconcile's entry
    claimed = await services.queue.claim("w2", ["echo"], 5)
    assert claimed == ["t1"]
    answer = await services.scheduler.start_claimed("w2", claimed)
    assert (answer.started, answer.refused) == ([], ["t1"])
    task = await get(services, "t1")
    assert (task.status, task.attempt) == ("pending", 1)
    # Parked in the delayed set again, not dropped and not left in the ready queue.
    delayed = await services.queue.redis.zrange(services.queue.keys.delayed, 0, -1)
    assert delayed == [b"echo 1 t1"]
    assert await services.queue.queued_ids("echo") == []


async def backdate_start(services: Services, task_id: str, seconds: float) -> None:
    started = datetime.now(UTC) - timedelta(seconds=seconds)
    async with services.db.transaction() as conn:
        await conn.execute(
            update(tasks).where(tasks.c.task_id == task_id).values(started_at=started)
        )


async def test_the_server_ends_an_attempt_that_overran_its_deadline(services: Services) -> None:
    await submit(services, "slow", timeout=5, max_retries=1)
    ((_, attempt),) = await run_next(services, "w1")
    cancels = services.queue.redis.pubsub()
    await cancels.subscribe(services.queue.keys.cancel_channel)
    assert await services.recovery.enforce_deadlines() == 0  # within its timeout
    # The worker still renews the lease (a handler that ignores its timeout); only the clock
    # says the attempt overran: started longer ago than timeout + grace.
    await backdate_start(services, "slow", 5 + 3 * services.settings.lease_seconds + 1)
    assert await services.recovery.enforce_deadlines() == 1
    task = await get(services, "slow")
    assert (task.status, task.error) == (
        "pending",
        "timed out: running longer than its timeout of 5 s",
    )
    assert [a.outcome for a in task.attempts or []] == ["timeout"]
    late = await services.scheduler.report(
        "w1", [report("slow", attempt, AttemptOutcome.COMPLETED)]
    )
    assert late.refused == ["slow"]
    message = await _next_message(cancels)
    assert b'"task_id":"slow"' in message
    await cancels.aclose()


async def _next_message(pubsub: PubSub) -> bytes:
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            return message["data"]  # type: ignore[no-any-return]
    raise AssertionError("no cancel message was published")


async def test_an_expired_lease_past_the_deadline_ends_as_a_timeout(services: Services) -> None:
    await submit(services, "slow", timeout=1, max_retries=0)
    await run_next(services, "w1")
    await backdate_start(services, "slow", 1 + services.settings.lease_seconds + 1)
    await expire_lease(services, "slow")
    assert await services.recovery.sweep_expired() == 1
    task = await get(services, "slow")
    assert task.status == "failed"
    assert [a.outcome for a in task.attempts or []] == ["timeout"]
