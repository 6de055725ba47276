"""Retention (RETENTION_DAYS) on SQLite and PostgreSQL: the leader deletes finished tasks that
ended long enough ago, with their attempts, events and logs, a bounded batch per step, and never
a task that an unfinished task depends on."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from app.config import Settings
from app.database import task_logs
from app.database.tables import attempts, dependencies, task_events, tasks
from app.database.tables import task_logs as task_logs_table
from app.models.logs import LogStream, ShippedLine
from app.models.task import AttemptOutcome, TaskCreate, TaskReport
from app.services.task_logs import Retention
from tests.conftest import Services, running

NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(days=10)


async def finish(services: Services, task_ids: Sequence[str], outcome: AttemptOutcome) -> None:
    claimed = await services.queue.claim("w", ["echo"], len(task_ids))
    assert sorted(claimed) == sorted(task_ids)
    await services.scheduler.exchange("w", [], claimed)
    reports = [
        TaskReport(task_id=t, attempt=1, outcome=outcome, result="r", error="e") for t in task_ids
    ]
    logged = [
        ShippedLine(
            task_id=t, attempt=1, line=0, at=NOW, level="INFO", stream=LogStream.STDOUT, message="x"
        )
        for t in task_ids
    ]
    answer = await services.scheduler.exchange("w", reports, [], logged)
    assert sorted(answer.accepted) == sorted(task_ids)


async def submit(services: Services, *task_ids: str, **fields: Any) -> None:
    specs = [TaskCreate(task_id=t, task_type="echo", max_retries=0, **fields) for t in task_ids]
    await services.scheduler.submit_many(specs)


async def age(services: Services, *task_ids: str) -> None:
    async with services.db.transaction() as conn:
        await conn.execute(
            update(tasks).where(tasks.c.task_id.in_(task_ids)).values(completed_at=LONG_AGO)
        )


async def count(services: Services, table: Any, task_ids: Sequence[str]) -> int:
    async with services.db.read() as conn:
        query = select(func.count()).select_from(table).where(table.c.task_id.in_(task_ids))
        return int((await conn.execute(query)).scalar_one())


def retention(services: Services, days: float = 1) -> Retention:
    return Retention(services.db, days=days, clock=lambda: NOW)


async def test_old_finished_tasks_go_with_their_attempts_events_and_logs(
    services: Services,
) -> None:
    await submit(services, "done", "failed", "recent")
    await finish(services, ["done"], AttemptOutcome.COMPLETED)
    await finish(services, ["failed"], AttemptOutcome.ERROR)
    await finish(services, ["recent"], AttemptOutcome.COMPLETED)
    await submit(services, "cancelled", "pending", "running")
    await services.scheduler.cancel("cancelled")
    claimed = await services.queue.claim("w", ["echo"], 2)
    await services.scheduler.exchange("w", [], claimed)  # "pending" and "running" now run
    await submit(services, "waiting")  # stays pending
    await age(services, "done", "failed", "cancelled", "pending", "running")
    gone = ["done", "failed", "cancelled"]
    assert await count(services, attempts, gone) == 2
    assert await count(services, task_logs_table, gone) == 2
    assert await count(services, task_events, gone) == 1

    assert await retention(services).step() == 3

    async with services.db.read() as conn:
        left: set[str] = set((await conn.execute(select(tasks.c.task_id))).scalars())
    assert left == {"recent", "pending", "running", "waiting"}
    for table in (attempts, task_logs_table, task_events):
        assert await count(services, table, gone) == 0
    assert await count(services, task_logs_table, ["recent"]) == 1


async def test_a_task_an_unfinished_task_depends_on_is_kept(services: Services) -> None:
    await submit(services, "parent", "lonely")
    await submit(services, "child", dependencies=["parent"])
    await finish(services, ["parent", "lonely"], AttemptOutcome.COMPLETED)
    await age(services, "parent", "lonely")
    rule = retention(services)
    assert await rule.step() == 1  # "lonely"; "child" still needs "parent"'s result
    async with services.db.read() as conn:
        assert await task_logs.task_exists(conn, "parent")
    await finish(services, ["child"], AttemptOutcome.COMPLETED)  # now it may go (once old)
    await age(services, "child")
    rule.rest_until = 0.0
    assert await rule.step() == 2
    assert await count(services, dependencies, ["child"]) == 0


async def test_a_step_purges_a_bounded_batch_and_rests_when_it_is_done(
    services: Services,
) -> None:
    ids = [f"t{n}" for n in range(5)]
    await submit(services, *ids)
    await finish(services, ids, AttemptOutcome.COMPLETED)
    await age(services, *ids)
    clock = [0.0]
    rule = Retention(services.db, days=1, clock=lambda: NOW, monotonic=lambda: clock[0])
    rule.BATCH = 2
    assert [await rule.step() for _ in range(3)] == [2, 2, 1]  # a full batch: on at once
    await submit(services, "later")
    await finish(services, ["later"], AttemptOutcome.COMPLETED)
    await age(services, "later")
    assert await rule.step() == 0  # resting after a partial batch
    clock[0] += Retention.IDLE_SECONDS
    assert await rule.step() == 1


async def test_the_leader_runs_retention_only_when_it_is_set(settings: Settings) -> None:
    def steps(client: httpx.AsyncClient) -> list[Any]:
        return [
            step
            for step in client.app.state.recovery.leader_steps  # type: ignore[attr-defined]
            if isinstance(getattr(step, "__self__", None), Retention)
        ]

    async with running(settings) as client:
        assert steps(client) == []
    async with running(settings.model_copy(update={"retention_days": 7.0})) as client:
        (step,) = steps(client)
        assert step.__self__.keep == timedelta(days=7)


async def test_long_logs_are_deleted_over_several_bounded_steps(services: Services) -> None:
    await submit(services, "chatty")
    await finish(services, ["chatty"], AttemptOutcome.COMPLETED)  # its first line
    more = [
        ShippedLine(
            task_id="chatty",
            attempt=1,
            line=n,
            at=NOW,
            level="INFO",
            stream=LogStream.STDOUT,
            message=str(n),
        )
        for n in range(1, 5)
    ]
    async with services.db.transaction() as conn:
        await task_logs.store(conn, more)
    await age(services, "chatty")
    clock = [0.0]
    rule = Retention(services.db, days=1, clock=lambda: NOW, monotonic=lambda: clock[0])
    rule.LOG_ROWS = 2
    assert [await rule.step() for _ in range(3)] == [0, 0, 1]  # 2 lines, 2 lines, 1 and the task
    assert await count(services, task_logs_table, ["chatty"]) == 0
    assert await count(services, tasks, ["chatty"]) == 0
