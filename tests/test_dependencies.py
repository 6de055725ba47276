"""Dependency graphs at the edges: diamonds, wide fan-in, long chains, failure and cancellation
in the middle. Every dependent either runs exactly once or ends; none waits forever."""

from __future__ import annotations

from app.database import repositories as repo
from app.models.task import AttemptOutcome, TaskCreate, TaskReport, TaskStatus
from tests.conftest import Services


async def drain(
    services: Services, *, fail: frozenset[str] = frozenset(), limit: int = 5000
) -> list[str]:
    """Run everything that becomes ready, as workers would; returns the order tasks started in."""
    order: list[str] = []
    for _ in range(limit):
        claimed = await services.queue.claim("w", ["echo"], 50)
        if not claimed:
            return order
        started = (await services.scheduler.start_claimed("w", claimed)).started
        order += [t.task_id for t in started]
        reports = [
            TaskReport(
                task_id=t.task_id,
                attempt=t.attempt,
                outcome=AttemptOutcome.ERROR if t.task_id in fail else AttemptOutcome.COMPLETED,
                result=t.task_id,
                error="planned failure" if t.task_id in fail else None,
            )
            for t in started
        ]
        await services.scheduler.report("w", reports)
    raise AssertionError("graph did not drain")


async def statuses(services: Services, ids: list[str]) -> dict[str, str]:
    async with services.db.transaction() as conn:
        found = await repo.get_tasks(conn, ids)
    return {task_id: found[task_id].status for task_id in ids}


def spec(task_id: str, *deps: str, **fields: object) -> TaskCreate:
    return TaskCreate(
        task_id=task_id, task_type="echo", dependencies=list(deps), max_retries=0, **fields
    )


async def test_diamond_runs_each_task_once_in_dependency_order(services: Services) -> None:
    await services.scheduler.submit_many(
        [spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c")]
    )
    order = await drain(services)
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order[0] == "a" and order[-1] == "d"


async def test_fan_in_of_100(services: Services) -> None:
    parents = [spec(f"p{i}") for i in range(100)]
    await services.scheduler.submit_many(
        [*parents, spec("sink", *(p.task_id or "" for p in parents))]
    )
    order = await drain(services)
    assert order[-1] == "sink" and len(order) == 101
    async with services.db.transaction() as conn:
        sink = await repo.get_task(conn, "sink")
    assert sink is not None and sink.status == "completed"


async def test_chain_of_1000(services: Services) -> None:
    chain = [spec("c0")] + [spec(f"c{i}", f"c{i - 1}") for i in range(1, 1000)]
    await services.scheduler.submit_many(chain)
    order = await drain(services)
    assert order == [f"c{i}" for i in range(1000)]


async def test_failure_in_the_middle_ends_everything_downstream(services: Services) -> None:
    chain = [spec("c0")] + [spec(f"c{i}", f"c{i - 1}") for i in range(1, 10)]
    await services.scheduler.submit_many([*chain, spec("side", "c2")])
    order = await drain(services, fail=frozenset({"c4"}))
    assert set(order) == {"c0", "c1", "c2", "c3", "c4", "side"}  # nothing past c4 ever started
    result = await statuses(services, [f"c{i}" for i in range(10)] + ["side"])
    assert [result[f"c{i}"] for i in range(10)] == ["completed"] * 4 + ["failed"] * 6
    assert result["side"] == "completed"


async def test_cancellation_in_the_middle_cancels_downstream_only(services: Services) -> None:
    chain = [spec("c0")] + [spec(f"c{i}", f"c{i - 1}") for i in range(1, 6)]
    await services.scheduler.submit_many(chain)
    await services.scheduler.cancel("c3")
    await drain(services)
    result = await statuses(services, [f"c{i}" for i in range(6)])
    assert [result[f"c{i}"] for i in range(6)] == ["completed"] * 3 + ["cancelled"] * 3


async def test_dependency_results_reach_the_dependent(services: Services) -> None:
    await services.scheduler.submit_many([spec("a"), spec("b", "a")])
    claimed = await services.queue.claim("w", ["echo"], 5)
    [a] = (await services.scheduler.start_claimed("w", claimed)).started
    await services.scheduler.report(
        "w",
        [
            TaskReport(
                task_id="a", attempt=a.attempt, outcome=AttemptOutcome.COMPLETED, result={"n": 42}
            )
        ],
    )
    claimed = await services.queue.claim("w", ["echo"], 5)
    [b] = (await services.scheduler.start_claimed("w", claimed)).started
    assert b.dependency_results == {"a": {"n": 42}}


async def test_depending_on_a_completed_task_is_ready_at_once(services: Services) -> None:
    await services.scheduler.submit(spec("a"))
    await drain(services)
    task, _ = await services.scheduler.submit(spec("b", "a"))
    assert task.status == TaskStatus.PENDING
    assert await drain(services) == ["b"]
