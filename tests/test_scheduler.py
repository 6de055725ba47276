"""Scheduler and recovery against real Redis and a real database (SQLite and PostgreSQL):
the task lifecycle, fencing of stale reports, retries, dependencies, and self-healing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from app.database import repositories as repo
from app.database.tables import tasks
from app.models.task import AttemptOutcome, ReadyTask, TaskCreate, TaskPublic, TaskReport
from tests.conftest import Services


async def submit(
    services: Services, task_id: str, task_type: str = "echo", **fields: Any
) -> TaskPublic:
    task, _created = await services.scheduler.submit(
        TaskCreate(task_id=task_id, task_type=task_type, **fields)
    )
    return task


async def get(services: Services, task_id: str) -> TaskPublic:
    async with services.db.transaction() as conn:
        task = await repo.get_task(conn, task_id)
    assert task is not None
    return task


async def run_next(
    services: Services, worker: str, types: list[str] | None = None
) -> list[tuple[str, int]]:
    """Claim in Redis and start in the database, as a worker does; returns (task_id, attempt)."""
    claimed = await services.queue.claim(worker, types or ["echo"], 10)
    started = await services.scheduler.start_claimed(worker, claimed)
    return [(t.task_id, t.attempt) for t in started.started]


def report(task_id: str, attempt: int, outcome: AttemptOutcome, **fields: Any) -> TaskReport:
    return TaskReport(task_id=task_id, attempt=attempt, outcome=outcome, **fields)


async def expire_lease(services: Services, task_id: str) -> None:
    """Move the lease deadline into the past instead of waiting for it (deterministic)."""
    await services.queue.redis.zadd(services.queue.keys.active, {task_id: 0})


async def test_task_runs_to_completion_with_one_attempt(services: Services) -> None:
    await submit(services, "t1", payload={"x": 1})
    assert await run_next(services, "w1") == [("t1", 1)]
    running = await get(services, "t1")
    assert (running.status, running.worker_id) == ("running", "w1")
    answer = await services.scheduler.report(
        "w1", [report("t1", 1, AttemptOutcome.COMPLETED, result={"x": 1})]
    )
    assert answer.accepted == ["t1"]
    done = await get(services, "t1")
    assert (done.status, done.result, done.attempt) == ("completed", {"x": 1}, 1)
    assert [a.outcome for a in done.attempts or []] == ["completed"]
    assert await services.queue.redis.zcard(services.queue.keys.active) == 0


async def test_late_report_from_a_lost_worker_is_refused(services: Services) -> None:
    await submit(services, "t1")
    assert await run_next(services, "w1") == [("t1", 1)]
    await expire_lease(services, "t1")
    assert await services.recovery.sweep_expired() == 1
    assert (await get(services, "t1")).status == "pending"
    assert await run_next(services, "w2") == [("t1", 2)]
    late = await services.scheduler.report(
        "w1", [report("t1", 1, AttemptOutcome.COMPLETED, result="old")]
    )
    assert late.refused == ["t1"]
    current = await services.scheduler.report(
        "w2", [report("t1", 2, AttemptOutcome.COMPLETED, result="new")]
    )
    assert current.accepted == ["t1"]
    task = await get(services, "t1")
    assert (task.status, task.result, task.worker_id) == ("completed", "new", "w2")
    assert [a.outcome for a in task.attempts or []] == ["worker_lost", "completed"]


async def test_duplicate_report_records_one_result(services: Services) -> None:
    await submit(services, "t1")
    await run_next(services, "w1")
    first = await services.scheduler.report(
        "w1", [report("t1", 1, AttemptOutcome.COMPLETED, result=1)]
    )
    again = await services.scheduler.report(
        "w1", [report("t1", 1, AttemptOutcome.COMPLETED, result=2)]
    )
    assert (first.accepted, again.refused) == (["t1"], ["t1"])
    assert (await get(services, "t1")).result == 1


async def test_a_failing_task_is_retried_then_fails_with_its_history(services: Services) -> None:
    await submit(services, "t1", max_retries=2)
    for attempt in (1, 2, 3):
        deadline = asyncio.get_running_loop().time() + 10
        while not (started := await run_next(services, "w1")):
            assert asyncio.get_running_loop().time() < deadline, "retry never became due"
            await services.queue.promote_due()
            await asyncio.sleep(0.02)
        assert started == [("t1", attempt)]
        await services.scheduler.report(
            "w1", [report("t1", attempt, AttemptOutcome.ERROR, error=f"boom {attempt}")]
        )
    task = await get(services, "t1")
    assert (task.status, task.error) == ("failed", "boom 3")
    assert [(a.attempt, a.outcome, a.error) for a in task.attempts or []] == [
        (1, "error", "boom 1"),
        (2, "error", "boom 2"),
        (3, "error", "boom 3"),
    ]


async def test_a_claim_of_a_task_no_longer_pending_is_refused_and_its_lease_dropped(
    services: Services,
) -> None:
    await submit(services, "t1")
    await run_next(services, "w1")
    await services.scheduler.report("w1", [report("t1", 1, AttemptOutcome.COMPLETED)])
    await services.queue.enqueue([ReadyTask("t1", "echo", 1)])  # a stale duplicate entry
    claimed = await services.queue.claim("w2", ["echo"], 5)
    answer = await services.scheduler.start_claimed("w2", claimed)
    assert (answer.started, answer.refused) == ([], ["t1"])
    assert await services.queue.redis.zcard(services.queue.keys.active) == 0


async def test_dependents_wait_then_see_their_dependencies_results(services: Services) -> None:
    await submit(services, "a")
    await submit(services, "b")
    await submit(services, "c", task_type="analysis", dependencies=["a", "b"])
    assert sorted(await run_next(services, "w1")) == [("a", 1), ("b", 1)]
    assert await services.queue.claim("w1", ["analysis"], 5) == []
    await services.scheduler.report("w1", [report("a", 1, AttemptOutcome.COMPLETED, result="ra")])
    assert await services.queue.claim("w1", ["analysis"], 5) == []
    await services.scheduler.report("w1", [report("b", 1, AttemptOutcome.COMPLETED, result="rb")])
    claimed = await services.queue.claim("w1", ["analysis"], 5)
    started = (await services.scheduler.start_claimed("w1", claimed)).started
    assert [t.task_id for t in started] == ["c"]
    assert started[0].dependency_results == {"a": "ra", "b": "rb"}


async def test_concurrent_completion_of_the_last_dependencies_queues_the_dependent_once(
    services: Services,
) -> None:
    await submit(services, "a")
    await submit(services, "b")
    await submit(services, "c", task_type="analysis", dependencies=["a", "b"])
    await run_next(services, "w1")
    await asyncio.gather(
        services.scheduler.report("w1", [report("a", 1, AttemptOutcome.COMPLETED)]),
        services.scheduler.report("w1", [report("b", 1, AttemptOutcome.COMPLETED)]),
    )
    assert await services.queue.queue_depths() == {"analysis": 1}
    async with services.db.transaction() as conn:
        heads = await repo.task_heads(conn, ["c"])
    assert heads["c"].remaining_dependencies == 0


async def test_a_failed_dependency_fails_its_dependents_transitively(services: Services) -> None:
    await submit(services, "a", max_retries=0)
    await submit(services, "b", dependencies=["a"])
    await submit(services, "c", dependencies=["b"])
    await run_next(services, "w1")
    await services.scheduler.report("w1", [report("a", 1, AttemptOutcome.ERROR, error="bad")])
    for task_id in ("b", "c"):
        task = await get(services, task_id)
        assert task.status == "failed"
        assert task.error is not None and "'a'" in task.error
    late = await submit(services, "d", dependencies=["c"])
    assert (late.status, late.error) == ("failed", "dependency 'c' failed")


async def test_redis_data_loss_is_rebuilt_from_the_database(services: Services) -> None:
    await submit(services, "queued", priority=7)
    await submit(services, "running")
    claimed = await services.queue.claim("w1", ["echo"], 1)
    assert claimed == ["queued"]
    await services.queue.enqueue([ReadyTask("queued", "echo", 7)])  # noop: leased
    await services.scheduler.start_claimed("w1", claimed)
    await services.queue.redis.flushall()
    await services.recovery.tick()  # notices the missing epoch
    assert await services.queue.queue_depths() == {"echo": 1}
    assert await services.queue.redis.hget(services.queue.keys.owners, "queued") == b"w1#1"
    assert await services.queue.renew([("queued", "w1#1")]) == []  # the worker keeps its lease
    answer = await services.scheduler.report("w1", [report("queued", 1, AttemptOutcome.COMPLETED)])
    assert answer.accepted == ["queued"]


async def test_reconciliation_queues_a_pending_task_redis_never_heard_of(
    services: Services,
) -> None:
    await submit(services, "t1")
    await services.queue.redis.delete(services.queue.keys.queue("echo"))  # as if the API died
    async with services.db.transaction() as conn:  # old enough not to be a submission in flight
        await conn.execute(
            update(tasks).values(updated_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    assert await services.recovery.reconcile_page() == 1
    assert await services.queue.claim("w1", ["echo"], 5) == ["t1"]


async def test_startup_drops_queue_entries_without_a_pending_task(services: Services) -> None:
    await submit(services, "real")
    await services.queue.enqueue([ReadyTask("ghost", "echo", 1)])
    await services.recovery.on_startup()
    assert await services.queue.queued_ids("echo") == ["real"]


async def test_a_claimed_but_never_started_task_returns_to_the_queue(services: Services) -> None:
    await submit(services, "t1")
    assert await services.queue.claim("w1", ["echo"], 1) == ["t1"]  # worker dies here
    await expire_lease(services, "t1")
    await services.recovery.sweep_expired()
    assert await run_next(services, "w2") == [("t1", 1)]


async def test_a_worker_that_stops_heartbeating_is_marked_offline(services: Services) -> None:
    from app.models.worker import WorkerRegister

    await services.workers.register(WorkerRegister(worker_id="w1", capabilities=["echo"]))
    assert await services.workers.mark_silent_offline() == []
    services.settings.heartbeat_interval = 0.01
    deadline = asyncio.get_running_loop().time() + 5
    while not (gone := await services.workers.mark_silent_offline()):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert gone == ["w1"]
    assert (await services.workers.list_all())[0].status == "offline"


async def test_only_one_scheduler_process_sweeps_at_a_time(services: Services) -> None:
    from app.services.recovery import Recovery

    other = Recovery(
        services.settings, services.db, services.queue, services.scheduler, services.workers
    )
    assert await services.recovery._hold_lock()
    assert not await other._hold_lock()
    assert await services.recovery._hold_lock()  # the holder keeps it
    await services.queue.redis.delete(services.queue.keys.sweeper_lock)  # as if it expired
    assert await other._hold_lock()


async def test_a_lease_kept_alive_by_its_worker_is_not_swept(services: Services) -> None:
    await submit(services, "t1")
    await run_next(services, "w1")
    for _ in range(3):
        assert await services.queue.renew([("t1", "w1#1")]) == []
        assert await services.recovery.sweep_expired() == 0
    assert (await get(services, "t1")).status == "running"


async def test_a_start_that_arrives_after_its_claim_lapsed_still_holds_the_lease(
    services: Services,
) -> None:
    await submit(services, "t1")
    claimed = await services.queue.claim("w1", ["echo"], 1)  # w1's start call is slow...
    await expire_lease(services, "t1")
    await services.recovery.sweep_expired()  # ...so the claim lapses and t1 is queued again
    started = await services.scheduler.start_claimed("w1", claimed)  # then the start lands
    assert [t.attempt for t in started.started] == [1]
    assert await services.queue.claim("w2", ["echo"], 5) == []  # no second copy to run
    assert await services.queue.redis.hget(services.queue.keys.owners, "t1") == b"w1#1"
    await expire_lease(services, "t1")  # w1 dies: the lease it held lets the sweeper notice
    await services.recovery.sweep_expired()
    assert await run_next(services, "w2") == [("t1", 2)]


async def test_a_running_task_whose_redis_lease_vanished_gets_one_back(services: Services) -> None:
    await submit(services, "t1")
    await run_next(services, "w1")
    await services.queue.release([("t1", "")])  # as if the lease write had failed
    assert await services.recovery.restore_missing_leases() == 0  # its database lease still runs
    async with services.db.transaction() as conn:
        await conn.execute(
            update(tasks).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await services.recovery.restore_missing_leases() == 1
    assert await services.queue.redis.hget(services.queue.keys.owners, "t1") == b"w1#1"
    await expire_lease(services, "t1")  # the worker is gone: the ordinary sweep takes over
    await services.recovery.sweep_expired()
    assert await run_next(services, "w2") == [("t1", 2)]


async def test_only_the_leader_rebuilds_redis(services: Services) -> None:
    from app.services.recovery import Recovery

    follower = Recovery(
        services.settings, services.db, services.queue, services.scheduler, services.workers
    )
    assert await services.recovery._hold_lock()  # the fixture's process leads
    await submit(services, "t1")
    await services.queue.redis.delete(services.queue.keys.epoch)  # Redis "lost its data"
    await follower.tick()
    assert not follower.leading
    assert not await services.queue.redis.exists(services.queue.keys.epoch)  # not rebuilt
    await services.recovery.tick()
    assert services.recovery.leading
    assert await services.queue.redis.exists(services.queue.keys.epoch)
    assert await services.queue.queue_depths() == {"echo": 1}


async def test_the_lock_is_renewed_only_by_its_holder(services: Services) -> None:
    from app.services.recovery import Recovery

    other = Recovery(
        services.settings, services.db, services.queue, services.scheduler, services.workers
    )
    assert await services.recovery._hold_lock()
    key = services.queue.keys.sweeper_lock
    await services.queue.redis.pexpire(key, 50)
    assert not await other._hold_lock()  # still held: the other may not renew it
    assert 0 < await services.queue.redis.pttl(key) <= 50
    deadline = asyncio.get_running_loop().time() + 5
    while not await other._hold_lock():  # it expires, and only then changes hands
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert not await services.recovery._hold_lock()


async def test_reconcile_does_not_queue_a_task_that_finished_after_it_looked(
    services: Services,
) -> None:
    """Its read of pending tasks is older than its look-ups in Redis: a task claimed, run and
    finished in between is in neither, and must not come back to the queue."""
    from types import SimpleNamespace

    await submit(services, "t1")
    [(task_id, attempt)] = await run_next(services, "w1")
    stale_read = [SimpleNamespace(task_id=task_id, task_type="echo", priority=1, scheduled_at=None)]
    await services.scheduler.report("w1", [report(task_id, attempt, AttemptOutcome.COMPLETED)])
    assert await services.recovery._requeue_missing(stale_read) == 0  # type: ignore[arg-type]
    assert await services.queue.queued_ids("echo") == []


async def test_a_task_no_live_worker_can_run_expires_when_asked_to(services: Services) -> None:
    from app.models.worker import WorkerRegister

    await services.workers.register(WorkerRegister(worker_id="w1", capabilities=["echo"]))
    await submit(services, "typo", task_type="ecoh")
    await submit(services, "after-typo", dependencies=["typo"])
    await submit(services, "fine")
    assert await services.recovery.expire_unroutable() == 0  # off by default
    services.settings.expire_unroutable_after = 0.05
    deadline = asyncio.get_running_loop().time() + 5
    while not await services.recovery.expire_unroutable():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    typo, after, fine = [await get(services, t) for t in ("typo", "after-typo", "fine")]
    assert (typo.status, typo.error) == ("failed", "no live worker can run task type 'ecoh'")
    assert (after.status, after.error) == ("failed", "dependency 'typo' failed")
    assert fine.status == "pending"
    assert await services.queue.queued_ids("ecoh") == []
