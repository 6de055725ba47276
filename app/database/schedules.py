"""Statements on schedules and their fires. Tasks are never written here: a fire's task goes
through admission (app/database/admission.py) like any other."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app.database.tables import schedule_fires, schedules, tasks
from app.models.schedule import ScheduleFire
from app.models.task import TaskStatus

ACTIVE = (TaskStatus.PENDING, TaskStatus.RUNNING)


async def insert_schedule(conn: AsyncConnection, values: dict[str, Any]) -> Row[Any]:
    """Create a schedule and return its row as stored; an existing schedule_id raises
    IntegrityError (the caller's 409)."""
    query = insert(schedules).values(**values).returning(*schedules.c)
    return (await conn.execute(query)).one()


async def get_schedule(conn: AsyncConnection, schedule_id: str) -> Row[Any] | None:
    rows = await conn.execute(select(schedules).where(schedules.c.schedule_id == schedule_id))
    return rows.first()


async def lock_schedule(conn: AsyncConnection, schedule_id: str) -> Row[Any] | None:
    """Read a schedule to change it: the row lock (PostgreSQL; SQLite has one writer) keeps a
    concurrent PATCH or fire from interleaving with this transaction."""
    query = select(schedules).where(schedules.c.schedule_id == schedule_id).with_for_update()
    return (await conn.execute(query)).first()


async def list_schedules(conn: AsyncConnection) -> list[Row[Any]]:
    return list(await conn.execute(select(schedules).order_by(schedules.c.schedule_id)))


async def update_schedule(
    conn: AsyncConnection, schedule_id: str, values: dict[str, Any]
) -> Row[Any] | None:
    """Apply a change; returns the row as it now is."""
    query = (
        update(schedules)
        .where(schedules.c.schedule_id == schedule_id)
        .values(**values)
        .returning(*schedules.c)
    )
    return (await conn.execute(query)).first()


async def delete_schedule(conn: AsyncConnection, schedule_id: str) -> bool:
    """Delete a schedule and its fire history (the tasks it made stay: they are ordinary tasks)."""
    await conn.execute(delete(schedule_fires).where(schedule_fires.c.schedule_id == schedule_id))
    gone = await conn.execute(delete(schedules).where(schedules.c.schedule_id == schedule_id))
    return bool(gone.rowcount)


async def due_schedules(conn: AsyncConnection, now: datetime, *, limit: int) -> list[Row[Any]]:
    """Enabled schedules whose next fire time has come, most overdue first."""
    query = (
        select(schedules)
        .where(schedules.c.enabled.is_(True), schedules.c.next_fire_at <= now)
        .order_by(schedules.c.next_fire_at)
        .limit(limit)
    )
    return list(await conn.execute(query))


async def advance(
    conn: AsyncConnection,
    schedule_id: str,
    *,
    handled: datetime,
    upcoming: datetime | None,
    now: datetime,
) -> bool:
    """Move next_fire_at past the fire times being handled, guarded by its old value: False means
    another leader (or a PATCH) got there first, and this transaction must fire nothing. On
    PostgreSQL the second writer waits for the first, then finds the guard false."""
    query = (
        update(schedules)
        .where(
            schedules.c.schedule_id == schedule_id,
            schedules.c.enabled.is_(True),
            schedules.c.next_fire_at == handled,
        )
        .values(next_fire_at=upcoming, updated_at=now)
        .returning(schedules.c.schedule_id)
    )
    return (await conn.execute(query)).first() is not None


async def record_fires(
    conn: AsyncConnection, schedule_id: str, fires: Sequence[dict[str, Any]], *, keep: int
) -> None:
    """One row per handled fire time (the primary key refuses a fire time handled twice), and
    only the schedule's newest `keep` kept: the history is for people and for
    max_concurrent_runs; the tasks' own ids keep a fire time from firing twice."""
    if not fires:
        return
    await conn.execute(insert(schedule_fires), list(fires))
    oldest_kept = (
        select(schedule_fires.c.fire_at)
        .where(schedule_fires.c.schedule_id == schedule_id)
        .order_by(schedule_fires.c.fire_at.desc())
        .offset(keep - 1)
        .limit(1)
        .scalar_subquery()
    )
    await conn.execute(
        delete(schedule_fires).where(
            schedule_fires.c.schedule_id == schedule_id, schedule_fires.c.fire_at < oldest_kept
        )
    )


async def count_active_runs(conn: AsyncConnection, schedule_id: str) -> int:
    """Tasks of the schedule still pending or running (max_concurrent_runs)."""
    query = (
        select(func.count())
        .select_from(schedule_fires.join(tasks, tasks.c.task_id == schedule_fires.c.task_id))
        .where(schedule_fires.c.schedule_id == schedule_id, tasks.c.status.in_(ACTIVE))
    )
    return int((await conn.execute(query)).scalar_one())


def _fires_query() -> Any:
    return select(
        schedule_fires.c.schedule_id,
        schedule_fires.c.fire_at,
        schedule_fires.c.task_id,
        schedule_fires.c.skipped,
        tasks.c.status,
    ).select_from(schedule_fires.outerjoin(tasks, tasks.c.task_id == schedule_fires.c.task_id))


def _fire(row: Row[Any]) -> ScheduleFire:
    return ScheduleFire(
        fire_at=row.fire_at, task_id=row.task_id, status=row.status, skipped=row.skipped
    )


async def last_fires(conn: AsyncConnection, schedule_id: str, *, limit: int) -> list[ScheduleFire]:
    """A schedule's newest fires with the status of their tasks (None: skipped, or the task was
    deleted since)."""
    query = (
        _fires_query()
        .where(schedule_fires.c.schedule_id == schedule_id)
        .order_by(schedule_fires.c.fire_at.desc())
        .limit(limit)
    )
    return [_fire(row) for row in await conn.execute(query)]


async def last_fires_of_all(conn: AsyncConnection, *, limit: int) -> dict[str, list[ScheduleFire]]:
    """The newest `limit` fires of every schedule in one statement (for the list)."""
    rank = (
        func.row_number()
        .over(partition_by=schedule_fires.c.schedule_id, order_by=schedule_fires.c.fire_at.desc())
        .label("rank")
    )
    ranked = select(schedule_fires, rank).subquery()
    query = (
        select(
            ranked.c.schedule_id,
            ranked.c.fire_at,
            ranked.c.task_id,
            ranked.c.skipped,
            tasks.c.status,
        )
        .select_from(ranked.outerjoin(tasks, tasks.c.task_id == ranked.c.task_id))
        .where(ranked.c.rank <= limit)
        .order_by(ranked.c.schedule_id, ranked.c.fire_at.desc())
    )
    found: dict[str, list[ScheduleFire]] = {}
    for row in await conn.execute(query):
        found.setdefault(row.schedule_id, []).append(_fire(row))
    return found
