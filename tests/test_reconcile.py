"""Reconciliation (docs/architecture.md, "Reconciliation") on real Valkey and on SQLite and
PostgreSQL: a full pass of the sweep ends within RECONCILE_FULL_PASS whatever the backlog, a
call reads for one sweep interval at most, the Redis check (known.lua) agrees with a lookup of
the queue, the leases and the delayed set, tasks finished meanwhile are not queued again, a
long pass stops when another process leads, and Redis's eviction policy is checked at start-up.

The sweep's pace follows Recovery.clock, which these tests move by hand instead of waiting."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import insert, update

from app.database import repositories as repo
from app.database.tables import tasks
from app.models.task import ReadyTask
from app.services import recovery as recovery_module
from app.services.message_queue import RedisQueue, delayed_member
from app.services.recovery import Recovery
from app.utils.embedded_servers import ValkeyServer
from tests.conftest import Services

LONG_AGO = datetime.now(UTC) - timedelta(hours=1)
# The maintenance loop's cadence at the default settings: a reconcile call every 5 sweeps of 1 s.
CALL_EVERY = 5.0


class Clock:
    """A clock the test moves: Recovery.clock reads it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending_row(task_id: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task_id": task_id,
        "task_type": "echo",
        "status": "pending",
        "priority": 5,
        "payload": {},
        "attempt": 0,
        "max_retries": 0,
        "timeout": 60,
        "fingerprint": task_id,
        "remaining_dependencies": 0,
        "has_dependents": False,
        "created_at": LONG_AGO,
        "updated_at": LONG_AGO,
    }
    return row | fields


async def seed_backlog(services: Services, count: int) -> list[str]:
    """`count` pending tasks last changed an hour ago (so in no tail pass), all queued in Redis,
    in the sweep's order."""
    ids = [f"old-{i:05d}" for i in range(count)]
    rows = [pending_row(task_id) for task_id in ids]
    async with services.db.transaction() as conn:
        for start in range(0, len(rows), 500):
            await conn.execute(insert(tasks), rows[start : start + 500])
    await services.queue.enqueue([ReadyTask(task_id, "echo", 5) for task_id in ids])
    return ids


@pytest.fixture
def clock(services: Services) -> Iterator[Clock]:
    fake = Clock()
    services.recovery.clock = fake
    yield fake


async def calls_until_known(
    services: Services, clock: Clock, task: ReadyTask, *, limit: int
) -> tuple[int, list[int]]:
    """Reconcile calls at the default cadence until `task` is back in Redis: how many calls it
    took, and how many sweep pages each call read."""
    recovery = services.recovery
    pages: list[int] = []
    for call in range(1, limit + 1):
        prior = getattr(recovery, "_sweep", None)
        before = prior.read if prior is not None else 0
        await recovery.reconcile_page()
        sweep = getattr(recovery, "_sweep", None)
        if sweep is not None:
            pages.append(sweep.read - before if sweep is prior else sweep.read)  # or a new pass
        clock.now += CALL_EVERY
        if (await services.queue.is_known([task])) == [True]:
            return call, pages
    return limit + 1, pages


# --- the bound -----------------------------------------------------------------------------------


async def test_a_task_lost_deep_in_the_backlog_is_found_within_one_full_pass(
    services: Services, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regression test of gap 3: 100 pages of backlog. One page per call needed 96 calls
    to reach the lost task; the paced sweep reaches it within one pass of 60 s (13 calls)."""
    monkeypatch.setattr(recovery_module, "PAGE", 20)
    ids = await seed_backlog(services, 2000)
    lost = ReadyTask(ids[1900], "echo", 5)
    await services.queue.remove_queued("echo", [lost.task_id])
    services.recovery._reconcile_cursor = ""  # a pass starts now
    calls_per_pass = math.ceil(Recovery.RECONCILE_FULL_PASS / CALL_EVERY) + 1
    calls, pages = await calls_until_known(services, clock, lost, limit=calls_per_pass)
    assert calls <= calls_per_pass
    # Each call reads its share of the pass and no more: 100 pages over 12 intervals.
    assert max(pages) <= math.ceil(100 * CALL_EVERY / Recovery.RECONCILE_FULL_PASS) + 1


async def test_a_task_lost_just_behind_the_sweep_is_found_by_the_next_pass(
    services: Services, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst place to lose a task: the sweep has just passed it. The next pass reaches the
    same place about one full pass later."""
    monkeypatch.setattr(recovery_module, "PAGE", 20)
    await seed_backlog(services, 2000)
    recovery = services.recovery
    recovery._reconcile_cursor = ""
    for _ in range(4):
        await recovery.reconcile_page()
        clock.now += CALL_EVERY
    behind = repo.ReadyKey.parse(recovery._reconcile_cursor)
    assert behind is not None
    lost = ReadyTask(behind.task_id, "echo", 5)
    await services.queue.remove_queued("echo", [lost.task_id])
    limit = math.ceil(Recovery.RECONCILE_FULL_PASS / CALL_EVERY) + 2
    calls, _pages = await calls_until_known(services, clock, lost, limit=limit)
    assert calls <= limit


async def test_a_call_reads_for_one_sweep_interval_at_most(
    services: Services, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls were missed (the database was down for minutes), so the whole pass is due: the
    next call still stops after one sweep interval, since the lease sweep waits for it."""
    monkeypatch.setattr(recovery_module, "PAGE", 20)
    await seed_backlog(services, 2000)
    recovery = services.recovery
    recovery._reconcile_cursor = ""
    await recovery.reconcile_page()
    clock.now += 10 * Recovery.RECONCILE_FULL_PASS
    check = recovery._requeue_missing
    per_page = 0.3 * services.settings.sweep_interval

    async def slow_page(rows: list[Any]) -> int:
        clock.now += per_page if rows else 0.0  # the tail pass reads nothing: not timed
        return await check(rows)

    monkeypatch.setattr(recovery, "_requeue_missing", slow_page)
    await recovery.reconcile_page()
    assert recovery._sweep is not None
    assert recovery._sweep.read == 1 + 4  # pages begun within the sweep: at 0, 0.3, 0.6, 0.9


async def test_a_long_call_stops_at_the_next_page_when_another_process_leads(
    services: Services, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery_module, "PAGE", 20)
    await seed_backlog(services, 2000)
    recovery = services.recovery
    recovery._reconcile_cursor = ""
    await recovery.reconcile_page()
    clock.now += Recovery.RECONCILE_FULL_PASS / 2  # half of the pass is due at once
    check = recovery._requeue_missing
    lock = services.queue.keys.sweeper_lock

    async def then_lose_the_lock(rows: list[Any]) -> int:
        if rows:  # a sweep page (the tail pass finds nothing: the backlog is an hour old)
            await services.queue.redis.set(lock, "another-process", px=60_000)
        return await check(rows)

    monkeypatch.setattr(recovery, "_requeue_missing", then_lose_the_lock)
    await recovery.reconcile_page()
    assert recovery._sweep is not None and recovery._sweep.read == 2  # one page in this call
    assert not recovery.leading
    await services.queue.redis.delete(lock)


async def test_a_follower_checks_recent_changes_only(services: Services, clock: Clock) -> None:
    """A process that does not lead reconciles after its own enqueue failed: the tail pass
    covers its tasks; the sweep is the leader's."""
    await seed_backlog(services, 3)
    await services.queue.remove_queued("echo", ["old-00001"])
    recovery = services.recovery
    recovery.leading = False
    recovery._reconcile_cursor = ""
    recovery._sweep = None
    assert await recovery.reconcile_page() == 0
    assert recovery._sweep is None


async def test_startup_checks_the_whole_backlog_at_once(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery_module, "PAGE", 20)
    ids = await seed_backlog(services, 500)
    await services.queue.remove_queued("echo", [ids[0], ids[250], ids[-1]])
    await services.recovery.on_startup()
    known = await services.queue.is_known([ReadyTask(i, "echo", 5) for i in ids])
    assert all(known)
    assert services.recovery._reconcile_cursor == ""  # the pass ended


# --- the Redis check -----------------------------------------------------------------------------


async def three_lookups(redis: Redis, queue: RedisQueue, task: ReadyTask) -> bool:
    """What "known" means, spelled out: in its type's queue, leased, or in the delayed set."""
    return (
        await redis.zscore(queue.keys.queue(task.task_type), task.task_id) is not None
        or await redis.zscore(queue.keys.active, task.task_id) is not None
        or await redis.zscore(queue.keys.delayed, delayed_member(task)) is not None
    )


async def test_known_lua_agrees_with_a_lookup_of_queue_lease_and_delayed_set(
    redis_client: Redis,
) -> None:
    queue = RedisQueue(redis_client, prefix="k")
    later = datetime.now(UTC) + timedelta(hours=1)
    await queue.enqueue(
        [
            ReadyTask("queued-a", "alpha", 3),
            ReadyTask("queued-b", "beta.v2", 7),
            ReadyTask("claimed", "gamma", 1),
            ReadyTask("delayed", "alpha", 4, later),
        ]
    )
    assert await queue.claim("w1", ["gamma"], 1) == ["claimed"]
    asked = [
        ReadyTask("queued-a", "alpha", 3),
        ReadyTask("queued-b", "beta.v2", 7),
        ReadyTask("claimed", "gamma", 1),
        ReadyTask("delayed", "alpha", 4, later),
        ReadyTask("delayed", "alpha", 9, later),  # another priority: another member
        ReadyTask("queued-a", "beta.v2", 3),  # queued under another type
        ReadyTask("ghost", "alpha", 3),
        ReadyTask("ghost-2", "new-type", 3),  # a type with no queue at all
    ]
    expected = [await three_lookups(redis_client, queue, task) for task in asked]
    assert expected == [True, True, True, True, False, False, False, False]
    assert await queue.is_known(asked) == expected
    lacking = [task for task, known in zip(asked, expected, strict=True) if not known]
    assert await queue.missing(asked) == lacking
    assert await queue.missing([]) == []


async def test_a_page_requeues_only_what_redis_lacks_and_is_still_pending(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page read from the database, checked in chunks: queued, leased and delayed tasks are
    left alone; a lost one is queued again; one finished after the read (a worker claimed, ran
    and reported it meanwhile) is in neither store's ready set and stays out."""
    monkeypatch.setattr(Recovery, "RECONCILE_CHECK", 2)
    later = datetime.now(UTC) + timedelta(hours=1)
    names = ["queued", "leased", "delayed", "lost", "finished"]
    rows = [pending_row(n, scheduled_at=later if n == "delayed" else None) for n in names]
    async with services.db.transaction() as conn:
        await conn.execute(insert(tasks), rows)
    queue = services.queue
    await queue.enqueue([ReadyTask("leased", "echo", 5)])
    assert await queue.claim("w1", ["echo"], 1) == ["leased"]
    await queue.enqueue([ReadyTask("queued", "echo", 5), ReadyTask("delayed", "echo", 5, later)])
    async with services.db.read() as conn:
        page = await repo.pending_ready_after(conn, None, limit=100)
    assert [r.task_id for r in page] == sorted(names)
    async with services.db.transaction() as conn:
        await conn.execute(
            update(tasks).where(tasks.c.task_id == "finished").values(status="completed")
        )
    assert await services.recovery._requeue_missing(page) == 1
    assert await queue.queued_ids("echo") == ["queued", "lost"]


# --- Redis's eviction policy ---------------------------------------------------------------------


def test_the_embedded_valkey_runs_without_eviction(tmp_path: Any) -> None:
    command = ValkeyServer(tmp_path)._command()
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


async def test_an_evicting_redis_is_reported_at_startup(services: Services) -> None:
    redis = services.queue.redis
    assert await services.recovery.check_eviction_policy() == "noeviction"
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert await services.recovery.check_eviction_policy() == "allkeys-lru"
        await services.recovery.on_startup()  # a warning, not a failure
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")


async def test_a_redis_that_forbids_config_is_tolerated(services: Services, tmp_path: Any) -> None:
    """Managed services (ElastiCache, Memorystore) refuse CONFIG; start-up goes on regardless."""
    server = ValkeyServer(tmp_path, appendonly=False, extra_args=["--rename-command", "CONFIG", ""])
    server.start()
    try:
        redis = Redis.from_url(server.url)
        queue = RedisQueue(redis, prefix=services.settings.redis_prefix)
        s = services
        recovery = Recovery(s.settings, s.db, queue, s.scheduler, s.workers)
        assert await recovery.check_eviction_policy() is None
        await recovery.on_startup()
        assert recovery.leading
        await redis.aclose()
    finally:
        server.stop()
