"""The worker protocol's one round trip (`Scheduler.exchange`) against real Redis and a real
database (SQLite and PostgreSQL): set-based reports guarded row by row, starts that are safe to
ask twice, and leases owned by one attempt (a stale message never frees a successor's lease)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.database import repositories as repo
from app.database import transitions
from app.models.task import AttemptOutcome, TaskCreate, TaskPublic, TaskReport
from app.services import scheduler as scheduler_module
from app.services.message_queue import lease_token
from tests.conftest import Services


async def submit(services: Services, *task_ids: str, **fields: Any) -> None:
    specs = [TaskCreate(task_id=t, task_type="echo", **fields) for t in task_ids]
    await services.scheduler.submit_many(specs)


async def get(services: Services, task_id: str) -> TaskPublic:
    async with services.db.read() as conn:
        task = await repo.get_task(conn, task_id)
    assert task is not None
    return task


async def claim_and_start(services: Services, worker: str, count: int = 10) -> dict[str, int]:
    claimed = await services.queue.claim(worker, ["echo"], count)
    answer = await services.scheduler.exchange(worker, [], claimed)
    return {t.task_id: t.attempt for t in answer.started}


def done(task_id: str, attempt: int, result: Any = None) -> TaskReport:
    return TaskReport(
        task_id=task_id, attempt=attempt, outcome=AttemptOutcome.COMPLETED, result=result
    )


async def owner(services: Services, task_id: str) -> bytes | None:
    value = await services.queue.redis.hget(services.queue.keys.owners, task_id)
    return value.encode() if isinstance(value, str) else value


async def test_a_batch_mixing_completed_failed_and_stale_reports(services: Services) -> None:
    await submit(services, "ok-1", "ok-2", "boom", "stale", max_retries=0)
    assert await claim_and_start(services, "w1") == dict.fromkeys(
        ["ok-1", "ok-2", "boom", "stale"], 1
    )
    await services.scheduler.report("w1", [done("stale", 1, "first")])  # recorded earlier
    reports = [
        done("ok-1", 1, {"n": 1}),
        TaskReport(task_id="boom", attempt=1, outcome=AttemptOutcome.ERROR, error="bad"),
        done("stale", 1, "second"),  # a duplicate of a recorded report
        done("ok-2", 7, "wrong attempt"),  # an attempt that never was
    ]
    answer = await services.scheduler.exchange("w1", reports, [])
    assert sorted(answer.accepted) == ["boom", "ok-1"]
    assert sorted(answer.refused_reports) == ["ok-2", "stale"]
    assert (await get(services, "ok-1")).result == {"n": 1}
    assert (await get(services, "stale")).result == "first"
    boom = await get(services, "boom")
    assert (boom.status, boom.error) == ("failed", "bad")
    ok2 = await get(services, "ok-2")
    assert (ok2.status, ok2.result) == ("running", None)
    assert [a.outcome for a in ok2.attempts or []] == ["running"]


async def test_a_report_from_another_worker_is_refused(services: Services) -> None:
    await submit(services, "t1")
    assert await claim_and_start(services, "w1") == {"t1": 1}
    forged = await services.scheduler.exchange("w2", [done("t1", 1, "forged")], [])
    assert forged.refused_reports == ["t1"]
    for outcome in (AttemptOutcome.ERROR, AttemptOutcome.RELEASED, AttemptOutcome.CANCELLED):
        other = TaskReport(task_id="t1", attempt=1, outcome=outcome, error="forged")
        answer = await services.scheduler.exchange("w2", [other], [])
        assert answer.refused_reports == ["t1"], outcome
    assert (await get(services, "t1")).status == "running"
    assert await owner(services, "t1") == b"w1#1"  # w2's message did not free w1's lease
    real = await services.scheduler.exchange("w1", [done("t1", 1, "real")], [])
    assert real.accepted == ["t1"]
    assert (await get(services, "t1")).result == "real"


async def test_reports_and_claims_travel_together(services: Services) -> None:
    await submit(services, "first")
    assert await claim_and_start(services, "w1") == {"first": 1}
    await submit(services, "second")
    claimed = await services.queue.claim("w1", ["echo"], 5)
    answer = await services.scheduler.exchange("w1", [done("first", 1)], claimed)
    assert (answer.accepted, [t.task_id for t in answer.started]) == (["first"], ["second"])
    assert await owner(services, "first") is None
    assert await owner(services, "second") == b"w1#1"


async def test_a_start_asked_twice_keeps_the_workers_attempt(services: Services) -> None:
    await submit(services, "t1")
    claimed = await services.queue.claim("w1", ["echo"], 1)
    first = await services.scheduler.exchange("w1", [], claimed)
    again = await services.scheduler.exchange("w1", [], claimed)  # its first answer was lost
    assert [t.attempt for t in first.started] == [t.attempt for t in again.started] == [1]
    assert again.refused_claims == []
    assert await owner(services, "t1") == b"w1#1"
    other = await services.scheduler.exchange("w2", [], claimed)
    assert (other.started, other.refused_claims) == ([], ["t1"])
    assert await owner(services, "t1") == b"w1#1"  # w2's refused claim did not drop w1's lease


async def test_the_sweeper_keeps_a_lease_a_start_took_after_it_looked(services: Services) -> None:
    """The sweeper reads 'pending' for an expired claim, then the worker's start commits and
    takes the lease for attempt 1: the requeue that follows must leave that lease alone."""
    await submit(services, "t1")
    claimed = await services.queue.claim("w1", ["echo"], 1)
    await services.queue.redis.zadd(services.queue.keys.active, {"t1": 0})  # the claim lapsed
    [(task_id, token)] = await services.queue.expired_leases()
    async with services.db.read() as conn:
        heads = await repo.task_heads(conn, [task_id])  # the sweeper's (soon stale) read
    await services.scheduler.exchange("w1", [], claimed)  # the start lands meanwhile
    await services.recovery._recover_one(task_id, token, heads[task_id], now=datetime.now(UTC))
    assert await owner(services, "t1") == lease_token("w1", 1).encode()
    assert await services.queue.queued_ids("echo") == []  # no second copy to run


async def test_a_lease_that_is_not_the_running_attempts_is_handed_to_it(
    services: Services,
) -> None:
    """A start committed but its lease never reached Redis (the old claim's lease remained):
    the sweep gives the lease to the running attempt instead of declaring its worker lost."""
    await submit(services, "t1")
    claimed = await services.queue.claim("w1", ["echo"], 1)
    await services.scheduler.exchange("w1", [], claimed)
    await services.queue.redis.hset(services.queue.keys.owners, "t1", "w1#0")  # the hold lost
    await services.queue.redis.zadd(services.queue.keys.active, {"t1": 0})
    assert await services.recovery.sweep_expired() == 1
    task = await get(services, "t1")
    assert (task.status, task.attempt) == ("running", 1)
    assert await owner(services, "t1") == b"w1#1"
    assert await services.queue.renew([("t1", "w1#1")]) == []


async def test_claims_handed_back_return_to_their_place(services: Services) -> None:
    await submit(services, "a", "b", "c")
    claims = await services.queue.claim_scored("w1", ["echo"], 2)
    assert [c.task_id for c in claims] == ["a", "b"]
    assert await services.queue.unclaim("w1", claims) == 2
    assert await services.queue.claim("w2", ["echo"], 3) == ["a", "b", "c"]
    assert await services.queue.unclaim("w1", claims) == 0  # w2 owns them now


async def test_a_start_whose_lease_and_answer_were_lost_lapses_after_one_lease(
    services: Services,
) -> None:
    """The double fault: the start committed, Redis failed before the lease was taken, and the
    answer was lost, so the worker handed its claim back to the queue. The next worker's claim
    of it is refused and gives the running attempt a lease, which lapses into the ordinary
    sweep (not the database lease, 3 heartbeats later)."""
    await submit(services, "t1")
    claims = await services.queue.claim_scored("w1", ["echo"], 1)
    now = datetime.now(UTC)
    async with services.db.transaction() as conn:
        await transitions.start(conn, ["t1"], worker_id="w1", now=now, lease_until=now)
    assert await services.queue.unclaim("w1", claims) == 1
    claimed = await services.queue.claim("w2", ["echo"], 1)
    answer = await services.scheduler.exchange("w2", [], claimed)
    assert (answer.started, answer.refused_claims) == ([], ["t1"])
    assert await owner(services, "t1") == b"w1#1"
    await services.queue.redis.zadd(services.queue.keys.active, {"t1": 0})  # w1 never renews
    assert await services.recovery.sweep_expired() == 1
    task = await get(services, "t1")
    assert (task.status, [a.outcome for a in task.attempts or []]) == ("pending", ["worker_lost"])
    assert await claim_and_start(services, "w2") == {"t1": 2}


class Recorder:
    """Stands in for a module's structlog logger: what was logged, at which level (structlog's
    own configuration, cached loggers and level, differs with the tests that ran before)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str | None]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.lines.append((event, level, fields.get("task_id")))

        return record


async def test_a_worker_confirming_a_cancel_is_not_a_stale_report(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await submit(services, "c1", "s1")
    assert await claim_and_start(services, "w1") == {"c1": 1, "s1": 1}
    await services.scheduler.cancel("c1")
    await services.scheduler.report("w1", [done("s1", 1)])
    confirm = TaskReport(task_id="c1", attempt=1, outcome=AttemptOutcome.CANCELLED, error="stop")
    recorder = Recorder()
    monkeypatch.setattr(scheduler_module, "log", recorder)
    answer = await services.scheduler.exchange("w1", [confirm, done("s1", 1)], [])
    assert sorted(answer.refused_reports) == ["c1", "s1"]
    assert ("report.after_cancel", "info", "c1") in recorder.lines
    assert ("report.stale", "warning", "s1") in recorder.lines  # a duplicate is a warning
    assert ("report.stale", "warning", "c1") not in recorder.lines


async def test_a_start_says_which_tasks_have_dependencies(services: Services) -> None:
    # The dependency-results query is skipped for tasks without dependencies; a task that has
    # none must not be taken for one just because other tasks in the store have some.
    await submit(services, "root", "free")
    await submit(services, "child", dependencies=["root"])
    now = datetime.now(UTC)
    async with services.db.transaction() as conn:
        rows = await transitions.start(
            conn, ["root", "free"], worker_id="w1", now=now, lease_until=now
        )
    assert {r.task_id: r.has_dependencies for r in rows} == {"root": False, "free": False}
    answer = await services.scheduler.exchange("w1", [done("root", 1, {"r": 1})], [])
    assert answer.accepted == ["root"]
    async with services.db.transaction() as conn:
        rows = await transitions.start(conn, ["child"], worker_id="w1", now=now, lease_until=now)
    assert [(r.task_id, r.has_dependencies) for r in rows] == [("child", True)]


async def test_completions_in_one_exchange_release_a_shared_dependent_once(
    services: Services,
) -> None:
    # PostgreSQL counts a dependent's completed dependencies per statement (pg_exchange): two
    # of them completed together must take it from 2 open dependencies to 0, and queue it once.
    await submit(services, "left", "right", "lone")
    await submit(services, "join", dependencies=["left", "right"])
    await submit(services, "after-lone", dependencies=["lone"])
    assert await claim_and_start(services, "w1") == dict.fromkeys(["left", "right", "lone"], 1)
    reports = [done("left", 1, "l"), done("right", 1, "r")]
    answer = await services.scheduler.exchange("w1", reports, [])
    assert sorted(answer.accepted) == ["left", "right"]
    assert await services.queue.queued_ids("echo") == ["join"]
    started = await claim_and_start(services, "w1")
    assert started == {"join": 1}
    async with services.db.read() as conn:
        assert await repo.dependency_results(conn, ["join"]) == {
            "join": {"left": "l", "right": "r"}
        }
    assert (await get(services, "after-lone")).status == "pending"  # lone is still running


async def test_a_claim_of_a_task_completed_in_the_same_exchange_is_refused(
    services: Services,
) -> None:
    # A stray queue entry of a task this worker is reporting: the report records it, and the
    # claim must not hand the finished attempt back to run as if it were still this worker's.
    await submit(services, "t1")
    assert await claim_and_start(services, "w1") == {"t1": 1}
    answer = await services.scheduler.exchange("w1", [done("t1", 1, "once")], ["t1"])
    assert (answer.accepted, answer.started, answer.refused_claims) == (["t1"], [], ["t1"])
    task = await get(services, "t1")
    assert (task.status, task.result, task.attempt) == ("completed", "once", 1)
