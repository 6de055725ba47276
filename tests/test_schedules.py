"""The schedule service on both stores with an injected clock: fires become ordinary tasks with
`{schedule_id}:{fire time}` ids, exactly once per fire time even with two leaders at once;
pausing, catch-up, max_concurrent_runs, manual triggers, and survival of Redis data loss."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.database.tables import schedules as schedules_table
from app.database.tables import tasks
from app.models.schedule import ScheduleCreate, ScheduleUpdate
from app.models.task import TaskCreate, TaskStatus
from app.services.scheduler import Scheduler
from app.services.schedules import ScheduleService, UnknownSchedule
from tests.conftest import Services

START = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def schedules(services: Services, clock: Clock) -> ScheduleService:
    return ScheduleService(services.settings, services.db, services.scheduler, clock=clock)


def spec(**fields: Any) -> ScheduleCreate:
    body = {"schedule_id": "every5", "interval_seconds": 5, "task": {"task_type": "report"}}
    return ScheduleCreate.model_validate(body | fields)


async def task_ids(services: Services) -> list[str]:
    async with services.db.read() as conn:
        rows = await conn.execute(tasks.select().order_by(tasks.c.task_id))
        return [row.task_id for row in rows]


async def test_an_interval_schedule_fires_each_time_once(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    created = await schedules.create(spec())
    assert created.next_fire_at == START + timedelta(seconds=5)
    assert await schedules.fire_due() == 0  # not due yet
    clock.advance(5.1)
    assert await schedules.fire_due() == 1
    assert await schedules.fire_due() == 0  # the same fire time, again: nothing
    clock.advance(5)
    assert await schedules.fire_due() == 1
    first, second = "every5:2026-12-01T02:00:05Z", "every5:2026-12-01T02:00:10Z"
    assert await task_ids(services) == [first, second]
    task = (await services.scheduler.read(first)).model_dump()
    assert task["correlation_id"] == "schedule:every5"
    assert task["status"] == TaskStatus.PENDING
    assert await services.queue.queued_ids("report") != []
    detail = await schedules.get("every5")
    assert [f.task_id for f in detail.last_fires] == [second, first]
    assert detail.last_fires[0].status == TaskStatus.PENDING
    assert detail.next_fire_at == START + timedelta(seconds=15)


async def test_a_cron_schedule_fires_at_its_wall_clock_time(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    body = {"cron": "30 3 * * *", "interval_seconds": None, "timezone": "Europe/Berlin"}
    created = await schedules.create(spec(schedule_id="nightly", **body))
    assert created.next_fire_at == datetime(2026, 12, 1, 2, 30, tzinfo=UTC)  # 03:30 CET
    clock.now = datetime(2026, 12, 1, 2, 30, 0, 400_000, tzinfo=UTC)
    assert await schedules.fire_due() == 1
    assert await task_ids(services) == ["nightly:2026-12-01T02:30:00Z"]


async def test_two_leaders_at_once_make_one_task_per_fire_time(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    """A leader paused past its lock and the new one fire together: the guarded advance and
    the unique task id leave exactly one task per fire time."""
    other = ScheduleService(services.settings, services.db, services.scheduler, clock=clock)
    await schedules.create(spec(interval_seconds=1, catch_up="all"))
    made = 0
    for _ in range(10):
        clock.advance(1)
        made += sum(await asyncio.gather(schedules.fire_due(), other.fire_due()))
    ids = await task_ids(services)
    expected = [f"every5:2026-12-01T02:00:{s:02d}Z" for s in range(1, 11)]
    assert ids == expected
    assert made == 10


async def test_a_paused_schedule_does_not_fire_and_resumes_from_now(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec(catch_up="all"))
    paused = await schedules.update("every5", ScheduleUpdate(enabled=False))
    assert paused.enabled is False and paused.next_fire_at is None
    clock.advance(60)
    assert await schedules.fire_due() == 0
    resumed = await schedules.update("every5", ScheduleUpdate(enabled=True))
    assert resumed.next_fire_at == START + timedelta(seconds=65)  # the pause is not replayed
    clock.advance(5)
    assert await schedules.fire_due() == 1
    assert await task_ids(services) == ["every5:2026-12-01T02:01:05Z"]


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [("none", [30]), ("one", [25, 30]), ("all", [5, 10, 15, 20, 25, 30])],
)
async def test_missed_fires_follow_catch_up(
    schedules: ScheduleService,
    services: Services,
    clock: Clock,
    catch_up: str,
    expected: list[int],
) -> None:
    """No leader for 30 s (every fire from :05 to :25 missed), then one tick at :30.2."""
    await schedules.create(spec(catch_up=catch_up))
    clock.advance(30.2)
    assert await schedules.fire_due() == len(expected)
    assert await task_ids(services) == [f"every5:2026-12-01T02:00:{s:02d}Z" for s in expected]
    assert (await schedules.get("every5")).next_fire_at == START + timedelta(seconds=35)


async def test_max_concurrent_runs_skips_and_records_the_skip(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec(max_concurrent_runs=1))
    clock.advance(5)
    assert await schedules.fire_due() == 1
    clock.advance(5)
    assert await schedules.fire_due() == 0  # the first run is still pending
    async with services.db.transaction() as conn:
        await conn.execute(update(tasks).values(status=TaskStatus.COMPLETED))
    clock.advance(5)
    assert await schedules.fire_due() == 1
    fires = (await schedules.get("every5")).last_fires
    assert [(f.skipped, f.status) for f in fires] == [
        (False, TaskStatus.PENDING),
        (True, None),
        (False, TaskStatus.COMPLETED),
    ]


async def test_end_at_stops_the_schedule(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec(end_at=START + timedelta(seconds=7)))
    clock.advance(20)
    assert await schedules.fire_due() == 1  # :05 (catch_up one), nothing after :07
    assert (await schedules.get("every5")).next_fire_at is None


async def test_trigger_fires_now_once_even_when_paused(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec(enabled=False))
    task = await schedules.trigger("every5")
    assert task.task_id == "every5:2026-12-01T02:00:00.000000Z"
    assert task.correlation_id == "schedule:every5"
    clock.advance(0.25)
    second = await schedules.trigger("every5")
    assert second.task_id == "every5:2026-12-01T02:00:00.250000Z"
    assert (await schedules.get("every5")).next_fire_at is None  # still paused


async def test_a_task_id_taken_by_another_body_is_skipped_not_stuck(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    taken = TaskCreate(task_id="every5:2026-12-01T02:00:05Z", task_type="other")
    await services.scheduler.submit(taken)
    await schedules.create(spec())
    clock.advance(5)
    assert await schedules.fire_due() == 0
    fire = (await schedules.get("every5")).last_fires[0]
    assert fire.skipped and fire.task_id is None
    clock.advance(5)
    assert await schedules.fire_due() == 1  # the schedule moved on


async def test_schedules_survive_a_restart_and_redis_data_loss(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec())
    clock.advance(5)
    await schedules.fire_due()
    await services.queue.redis.flushdb()
    await services.recovery.tick()  # the leader rebuilds Redis from the database
    assert await services.queue.queued_ids("report") == ["every5:2026-12-01T02:00:05Z"]
    fresh = ScheduleService(services.settings, services.db, services.scheduler, clock=clock)
    clock.advance(5)
    assert await fresh.fire_due() == 1
    assert len(await task_ids(services)) == 2


async def test_delete_removes_the_schedule_but_keeps_its_tasks(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec())
    clock.advance(5)
    await schedules.fire_due()
    await schedules.delete("every5")
    with pytest.raises(UnknownSchedule):
        await schedules.get("every5")
    with pytest.raises(UnknownSchedule):
        await schedules.delete("every5")
    assert await task_ids(services) == ["every5:2026-12-01T02:00:05Z"]


async def test_switching_an_interval_schedule_to_cron(
    schedules: ScheduleService, clock: Clock
) -> None:
    await schedules.create(spec())
    changed = await schedules.update("every5", ScheduleUpdate(cron="0 * * * *"))
    assert changed.cron == "0 * * * *" and changed.interval_seconds is None
    assert changed.next_fire_at == START + timedelta(hours=1)


async def test_resending_the_stored_state_keeps_due_fire_times(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec(catch_up="all"))
    clock.advance(12)  # :05 and :10 due, not fired yet
    unchanged = await schedules.update("every5", ScheduleUpdate(enabled=True, catch_up="all"))
    assert unchanged.next_fire_at == START + timedelta(seconds=5)
    assert await schedules.fire_due() == 2


async def test_a_fire_the_scheduler_refuses_is_skipped(
    services: Services, clock: Clock, schedules: ScheduleService
) -> None:
    """A payload over a MAX_PAYLOAD_BYTES lowered since the schedule was made."""
    await schedules.create(spec(task={"task_type": "report", "payload": {"blob": "x" * 100}}))
    strict = services.settings.model_copy(update={"max_payload_bytes": 50})
    scheduler = Scheduler(strict, services.db, services.queue)
    limited = ScheduleService(strict, services.db, scheduler, clock=clock)
    clock.advance(5)
    assert await limited.fire_due() == 0
    fire = (await limited.get("every5")).last_fires[0]
    assert fire.skipped and fire.task_id is None
    assert (await limited.get("every5")).next_fire_at == START + timedelta(seconds=10)


async def test_one_broken_schedule_does_not_stop_the_others(
    schedules: ScheduleService, services: Services, clock: Clock
) -> None:
    await schedules.create(spec(schedule_id="broken"))
    await schedules.create(spec(schedule_id="fine"))
    async with services.db.transaction() as conn:
        # A row no API call can make (the models refuse it): a bug's stand-in.
        await conn.execute(
            update(schedules_table)
            .where(schedules_table.c.schedule_id == "broken")
            .values(interval_seconds=None, cron="not a cron")
        )
    clock.advance(5)
    assert await schedules.fire_due() == 1
    assert await task_ids(services) == ["fine:2026-12-01T02:00:05Z"]


async def test_the_fire_history_keeps_only_the_newest_fires(
    schedules: ScheduleService, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.services.schedules as service

    monkeypatch.setattr(service, "KEEP_FIRES", 3)
    await schedules.create(spec())
    for _ in range(5):
        clock.advance(5)
        assert await schedules.fire_due() == 1
    fired = [f.fire_at for f in (await schedules.get("every5")).last_fires]
    assert fired == [START + timedelta(seconds=s) for s in (25, 20, 15)]
