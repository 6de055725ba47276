"""Periodic schedules (docs/schedules.md): stored in the database, fired by the leader's tick.

A fire is one transaction: move the schedule's next fire time past the times being fired
(guarded by its old value), admit their tasks through the ordinary admission path, record the
fires. The task id `{schedule_id}:{fire time}` and the fires' primary key make a fire time
unique in the database itself, so two leaders at once (one paused past its lock) still make one
task; the guard makes the loser roll back instead of failing on the key. Redis is told after the
commit, like every admission: a crash in between is repaired by reconciliation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings
from app.database import repositories as repo
from app.database import schedules as store
from app.database.admission import AdmissionError, NewTask, admit
from app.database.connection import Database
from app.models.schedule import (
    CatchUp,
    ScheduleCreate,
    ScheduleFire,
    SchedulePublic,
    ScheduleTask,
    ScheduleUpdate,
)
from app.models.task import TaskCreate, TaskPublic
from app.services import schedule_times as when
from app.services.scheduler import Scheduler, utcnow

log = structlog.get_logger(__name__)
# Schedules handled per tick; the most overdue first, the rest at the next tick.
DUE_PER_TICK = 100
LAST_FIRES = 20  # on GET one
ON_TIME_SECONDS = 5.0
KEEP_FIRES = 1000  # fire history kept per schedule (app/database/schedules.py record_fires)
LAST_FIRES_IN_LIST = 5  # on the list: enough for the dashboard to see recent failures
# A change of these recomputes the next fire time from now.
CADENCE_FIELDS = ("cron", "interval_seconds", "timezone", "start_at", "end_at", "enabled")


class UnknownSchedule(Exception):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule '{schedule_id}' not found")
        self.schedule_id = schedule_id


class ScheduleExists(Exception):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule '{schedule_id}' already exists")


class FireRefused(Exception):
    """Admission refused a fire's task (its id is taken by another body)."""

    def __init__(self, fire_at: datetime, message: str) -> None:
        super().__init__(message)
        self.fire_at = fire_at


class InvalidChange(Exception):
    """A PATCH whose result would be invalid (for example end_at before the kept start_at)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def correlation_id(schedule_id: str) -> str:
    return f"schedule:{schedule_id}"


@dataclass(frozen=True)
class Fire:
    """One fire time to handle, with the task it makes (None: skipped)."""

    at: datetime
    task: NewTask | None


def _times(values: Mapping[str, Any]) -> when.Cadence:
    return when.cadence(
        cron=values["cron"],
        interval_seconds=values["interval_seconds"],
        timezone=values["timezone"],
        anchor=values["start_at"] or values["created_at"],
    )


def _upcoming(values: Mapping[str, Any], now: datetime) -> datetime | None:
    """The next fire time of a schedule created, changed or resumed now (None: paused)."""
    if not values["enabled"]:
        return None
    times = _times(values)
    return when.first_fire(times, now=now, start_at=values["start_at"], end_at=values["end_at"])


def to_public(row: Row[Any], fires: list[ScheduleFire] | None = None) -> SchedulePublic:
    return SchedulePublic(
        schedule_id=row.schedule_id,
        cron=row.cron,
        interval_seconds=row.interval_seconds,
        timezone=row.timezone,
        task=ScheduleTask.model_validate(row.task),
        enabled=row.enabled,
        catch_up=CatchUp(row.catch_up),
        start_at=row.start_at,
        end_at=row.end_at,
        max_concurrent_runs=row.max_concurrent_runs,
        next_fire_at=row.next_fire_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_fires=fires or [],
    )


class ScheduleService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        scheduler: Scheduler,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """`clock`: aware UTC datetimes; tests pass a fixed one and call fire_due themselves."""
        self.db = db
        self.scheduler = scheduler
        self.clock = clock
        # A fire time up to five ticks (at least 5 s) old is on time and always fires; older
        # ones were missed (no leader fired them) and follow the schedule's catch_up. Two ticks
        # were too tight: a busy leader's tick runs late by a sweep or two (reconciliation has
        # a budget of one), and catch_up "none" would then skip a fire nobody missed.
        self.grace = timedelta(seconds=max(5 * settings.sweep_interval, ON_TIME_SECONDS))

    # --- the API's operations -------------------------------------------------------------------

    async def create(self, spec: ScheduleCreate) -> SchedulePublic:
        now = self.clock()
        self._task_for(spec.schedule_id, spec.task, "payload-check", now)  # too large: 413
        values = spec.model_dump(exclude={"task"}) | {
            "task": spec.task.model_dump(mode="json"),
            "created_at": now,
            "updated_at": now,
        }
        values["next_fire_at"] = _upcoming(values, now)
        try:
            async with self.db.transaction() as conn:
                row = await store.insert_schedule(conn, values)
        except IntegrityError as exc:
            raise ScheduleExists(spec.schedule_id) from exc
        log.info("schedule.created", schedule_id=spec.schedule_id, next=values["next_fire_at"])
        return to_public(row)

    async def get(self, schedule_id: str) -> SchedulePublic:
        async with self.db.read() as conn:
            row = await store.get_schedule(conn, schedule_id)
            if row is None:
                raise UnknownSchedule(schedule_id)
            fires = await store.last_fires(conn, schedule_id, limit=LAST_FIRES)
        return to_public(row, fires)

    async def list_all(self) -> list[SchedulePublic]:
        async with self.db.read() as conn:
            rows = await store.list_schedules(conn)
            fires = await store.last_fires_of_all(conn, limit=LAST_FIRES_IN_LIST)
        return [to_public(row, fires.get(row.schedule_id)) for row in rows]

    async def update(self, schedule_id: str, change: ScheduleUpdate) -> SchedulePublic:
        """Apply a PATCH. A change of cadence, bounds or enabled computes the next fire time
        afresh from now: resuming does not replay the pause."""
        now = self.clock()
        changes = change.changes()
        async with self.db.transaction() as conn:
            row = await store.lock_schedule(conn, schedule_id)
            if row is None:
                raise UnknownSchedule(schedule_id)
            if change.task is not None:
                self._task_for(schedule_id, change.task, "payload-check", now)
                changes["task"] = change.task.model_dump(mode="json")
            merged = _merge(row, changes)
            _check_merged(merged)
            if _cadence_changed(row, changes):
                changes["next_fire_at"] = _upcoming(merged, now)
            updated = await store.update_schedule(conn, schedule_id, changes | {"updated_at": now})
            fires = await store.last_fires(conn, schedule_id, limit=LAST_FIRES)
        assert updated is not None
        log.info("schedule.updated", schedule_id=schedule_id, fields=sorted(changes))
        return to_public(updated, fires)

    async def delete(self, schedule_id: str) -> None:
        async with self.db.transaction() as conn:
            if not await store.delete_schedule(conn, schedule_id):
                raise UnknownSchedule(schedule_id)
        log.info("schedule.deleted", schedule_id=schedule_id)

    async def trigger(self, schedule_id: str) -> TaskPublic:
        """Fire now, once, whatever the schedule's state (paused, max_concurrent_runs): an
        operator asked. The schedule's next fire time does not move."""
        now = self.clock()
        async with self.db.transaction() as conn:
            row = await store.get_schedule(conn, schedule_id)
            if row is None:
                raise UnknownSchedule(schedule_id)
            spec = ScheduleTask.model_validate(row.task)
            task = self._task_for(schedule_id, spec, when.trigger_time_text(now), now)
            admitted = await admit(conn, [task], now=now)
            fired = [_fire_row(schedule_id, Fire(now, task))]
            await store.record_fires(conn, schedule_id, fired, keep=KEEP_FIRES)
        await self.scheduler.announce([task], admitted)
        log.info("schedule.triggered", schedule_id=schedule_id, task_id=task.task_id)
        stored = admitted[0].row
        if stored is not None:
            return repo.to_public(stored, [])
        return await self.scheduler.read(task.task_id)

    # --- the leader's step ----------------------------------------------------------------------

    async def fire_due(self) -> int:
        """Fire every schedule whose time has come (the leader's step, each sweep interval).
        Returns how many tasks were made."""
        now = self.clock()
        async with self.db.read() as conn:
            due = await store.due_schedules(conn, now, limit=DUE_PER_TICK)
        made = 0
        for row in due:
            try:
                made += await self._fire_schedule(row, now)
            except (DBAPIError, RedisError, OSError):
                raise  # a store is down: the maintenance loop waits and tries again
            except Exception:
                # One schedule's bug must not stop the others from firing.
                log.exception("schedule.fire_failed", schedule_id=row.schedule_id)
        return made

    async def _fire_schedule(self, row: Row[Any], now: datetime) -> int:
        plan = when.plan_fires(
            _times(dict(row._mapping)),
            next_fire_at=row.next_fire_at,
            now=now,
            catch_up=CatchUp(row.catch_up),
            grace=self.grace,
            end_at=row.end_at,
        )
        if plan.missed_skipped:
            log.warning("schedule.missed", schedule_id=row.schedule_id, catch_up=row.catch_up)
        refused: set[datetime] = set()
        # A fire whose task id is taken by another body (a task submitted by hand under that
        # id) cannot be admitted: it is recorded as skipped rather than block the schedule.
        for _ in range(len(plan.fire) + 1):
            try:
                return await self._fire_once(row, plan, refused, now)
            except FireRefused as exc:
                refused.add(exc.fire_at)
                log.warning("schedule.fire_refused", schedule_id=row.schedule_id, error=str(exc))
            except IntegrityError:
                # Another leader fired the same time (the unique task id or fire key said so).
                log.info("schedule.fired_elsewhere", schedule_id=row.schedule_id)
                return 0
        return 0

    async def _fire_once(
        self, row: Row[Any], plan: when.FirePlan, refused: set[datetime], now: datetime
    ) -> int:
        async with self.db.transaction() as conn:
            moved = await store.advance(
                conn, row.schedule_id, handled=row.next_fire_at, upcoming=plan.next_fire_at, now=now
            )
            if not moved:
                return 0  # another leader or a PATCH got there first
            fires = await self._fires(conn, row, plan.fire, refused, now)
            made = [f for f in fires if f.task is not None]
            tasks = [f.task for f in made if f.task is not None]
            try:
                admitted = await admit(conn, tasks, now=now)
            except AdmissionError as exc:
                raise FireRefused(made[exc.index].at, str(exc)) from exc
            fired = [_fire_row(row.schedule_id, f) for f in fires]
            await store.record_fires(conn, row.schedule_id, fired, keep=KEEP_FIRES)
        await self.scheduler.announce(tasks, admitted)
        created = sum(a.created for a in admitted)
        log.info(
            "schedule.fired",
            schedule_id=row.schedule_id,
            fires=[when.fire_time_text(f.at) for f in fires],
            created=created,
            skipped=len(fires) - len(tasks),
            next=plan.next_fire_at,
        )
        return created

    async def _fires(
        self,
        conn: AsyncConnection,
        row: Row[Any],
        times: Sequence[datetime],
        refused: set[datetime],
        now: datetime,
    ) -> list[Fire]:
        """The fires of this tick, each with its task unless skipped: refused, or the schedule
        already has max_concurrent_runs tasks pending or running."""
        room = len(times)
        if row.max_concurrent_runs is not None:
            active = await store.count_active_runs(conn, row.schedule_id)
            room = max(0, row.max_concurrent_runs - active)
        spec = ScheduleTask.model_validate(row.task)
        fires: list[Fire] = []
        for moment in times:
            task = (
                None if moment in refused or room == 0 else self._fire_task(row, spec, moment, now)
            )
            room -= task is not None
            fires.append(Fire(moment, task))
        return fires

    def _fire_task(
        self, row: Row[Any], spec: ScheduleTask, moment: datetime, now: datetime
    ) -> NewTask | None:
        """The task of a scheduled fire; None (a skipped fire) when the scheduler refuses it,
        e.g. a payload over a MAX_PAYLOAD_BYTES lowered since the schedule was made."""
        try:
            return self._task_for(row.schedule_id, spec, when.fire_time_text(moment), now)
        except AdmissionError as exc:
            log.warning("schedule.fire_refused", schedule_id=row.schedule_id, error=str(exc))
            return None

    # --- helpers --------------------------------------------------------------------------------

    def _task_for(self, schedule_id: str, spec: ScheduleTask, stamp: str, now: datetime) -> NewTask:
        """The task `{schedule_id}:{stamp}`, resolved by the scheduler like any submission
        (defaults, payload limit: AdmissionError)."""
        body = TaskCreate(task_id=f"{schedule_id}:{stamp}", **spec.model_dump())
        return self.scheduler.resolve(0, body, correlation_id(schedule_id), now)


def _cadence_changed(row: Row[Any], changes: dict[str, Any]) -> bool:
    """Whether a PATCH changes when the schedule fires. Sending a field with its stored value
    (`enabled: true` to an active schedule) is no change: it must not drop due fire times."""
    stored = row._mapping
    return any(name in changes and changes[name] != stored[name] for name in CADENCE_FIELDS)


def _merge(row: Row[Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(row._mapping) | changes
    # Switching kinds: cron given clears the interval, and the reverse.
    if changes.get("cron") is not None:
        merged["interval_seconds"] = None
        changes["interval_seconds"] = None
    if changes.get("interval_seconds") is not None:
        merged["cron"] = None
        changes["cron"] = None
    return merged


def _check_merged(merged: dict[str, Any]) -> None:
    if merged["cron"] is None and merged["interval_seconds"] is None:
        raise InvalidChange("cron", "a schedule needs one of cron and interval_seconds")
    start, end = merged["start_at"], merged["end_at"]
    if start is not None and end is not None and end <= start:
        raise InvalidChange("end_at", "end_at must be after start_at")


def _fire_row(schedule_id: str, fire: Fire) -> dict[str, Any]:
    return {
        "schedule_id": schedule_id,
        "fire_at": fire.at.astimezone(UTC),
        "task_id": None if fire.task is None else fire.task.task_id,
        "skipped": fire.task is None,
    }
