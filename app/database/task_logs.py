"""Storage of per-task log lines, and the retention purge of finished tasks.

Log lines never share a transaction with a transition: a line the store refuses must not undo
the report it travelled with (docs/architecture.md, "Per-task logs")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Exists, and_, delete, exists, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.database.tables import attempts, dependencies, task_logs, tasks, upsert_into
from app.models.logs import SEQ_PER_ATTEMPT, LogLine, LogStream, ShippedLine
from app.models.task import FINAL_STATUSES

FINISHED = sorted(str(status) for status in FINAL_STATUSES)


async def store(
    conn: AsyncConnection, lines: Sequence[ShippedLine], *, worker_id: str | None = None
) -> int:
    """Insert a batch of lines in one statement; returns how many were offered to it. A line
    stored before (the same batch sent again after a lost answer) is skipped: its (task_id, seq)
    is its identity. With `worker_id`, only lines of attempts that worker ran are kept, as only
    its reports are: a worker's key cannot write into other workers' tasks."""
    if worker_id is not None:
        lines = await _ran_by(conn, lines, worker_id)
    if not lines:
        return 0
    statement = upsert_into(conn.dialect.name, task_logs).on_conflict_do_nothing(
        index_elements=[task_logs.c.task_id, task_logs.c.seq]
    )
    rows = [
        {
            "task_id": line.task_id,
            "seq": line.seq,
            "attempt": line.attempt,
            "at": line.at,
            "level": line.level,
            "stream": str(line.stream),
            "message": line.message,  # storable by construction (ShippedLine)
        }
        for line in lines
    ]
    await conn.execute(statement, rows)
    return len(rows)


async def _ran_by(
    conn: AsyncConnection, lines: Sequence[ShippedLine], worker_id: str
) -> list[ShippedLine]:
    """The lines of attempts `worker_id` runs (the task's row) or ran (its attempt history: the
    last lines of an attempt may come after its report)."""
    task_ids = list({line.task_id for line in lines})
    running = select(tasks.c.task_id, tasks.c.attempt).where(
        tasks.c.task_id.in_(task_ids), tasks.c.worker_id == worker_id
    )
    ended = select(attempts.c.task_id, attempts.c.attempt).where(
        attempts.c.task_id.in_(task_ids), attempts.c.worker_id == worker_id
    )
    found = await conn.execute(running.union_all(ended))
    owned = {(row.task_id, row.attempt) for row in found}
    return [line for line in lines if (line.task_id, line.attempt) in owned]


async def read(
    conn: AsyncConnection, task_id: str, *, attempt: int | None, after: int | None, limit: int
) -> list[LogLine]:
    """One task's lines in order of seq, after `after`, of one attempt or all: one range of the
    primary key either way."""
    where = [task_logs.c.task_id == task_id]
    if after is not None:
        where.append(task_logs.c.seq > after)
    if attempt is not None:
        # The attempt's lines are exactly its seq range; the bounds keep the scan inside it.
        where.append(task_logs.c.seq >= attempt * SEQ_PER_ATTEMPT)
        where.append(task_logs.c.seq < (attempt + 1) * SEQ_PER_ATTEMPT)
    query = (
        select(
            task_logs.c.seq,
            task_logs.c.attempt,
            task_logs.c.at,
            task_logs.c.level,
            task_logs.c.stream,
            task_logs.c.message,
        )
        .where(*where)
        .order_by(task_logs.c.seq)
        .limit(limit)
    )
    rows = (await conn.execute(query)).all()
    return [
        LogLine(
            seq=r.seq,
            attempt=r.attempt,
            at=r.at,
            level=r.level,
            stream=LogStream(r.stream),
            message=r.message,
        )
        for r in rows
    ]


async def task_exists(conn: AsyncConnection, task_id: str) -> bool:
    found = await conn.execute(select(tasks.c.task_id).where(tasks.c.task_id == task_id))
    return found.first() is not None


def _needed_by_unfinished() -> Exists:
    """Some task not yet finished depends on this one (it will read its result when it starts,
    or a manual retry of it would)."""
    dependent = tasks.alias("dependent")
    return exists().where(
        dependencies.c.depends_on == tasks.c.task_id,
        dependent.c.task_id == dependencies.c.task_id,
        dependent.c.status.not_in(FINISHED),
    )


@dataclass(frozen=True)
class Purged:
    tasks: int
    # False: the candidates' log lines were more than one step may delete; only those went.
    complete: bool


async def purge_finished(
    conn: AsyncConnection, *, before: datetime, limit: int, log_rows: int
) -> Purged:
    """Delete up to `limit` finished tasks that ended before `before` and that no unfinished
    task depends on; their attempts, events, logs and edges go with them (ON DELETE CASCADE).
    Their log lines go first, at most `log_rows` of them: tasks with long logs take a few steps
    (then no task is deleted in this one), so that no step's transaction grows with the logs.
    The candidates are locked first (PostgreSQL), so an admission naming one as a dependency
    waits for this transaction and then finds it gone; the deletion, with a fresh snapshot, sees
    every dependency edge committed before the lock and spares those tasks."""
    old_and_finished = and_(
        tasks.c.status.in_(FINISHED),
        tasks.c.completed_at.is_not(None),
        tasks.c.completed_at < before,
    )
    candidates = (
        select(tasks.c.task_id)
        .where(old_and_finished, ~_needed_by_unfinished())
        .order_by(tasks.c.completed_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids: list[str] = list((await conn.execute(candidates)).scalars())
    if not ids:
        return Purged(0, complete=True)
    some_lines = (
        select(task_logs.c.task_id, task_logs.c.seq)
        .where(task_logs.c.task_id.in_(ids))
        .limit(log_rows)
    )
    lines = delete(task_logs).where(tuple_(task_logs.c.task_id, task_logs.c.seq).in_(some_lines))
    if (await conn.execute(lines)).rowcount >= log_rows:
        return Purged(0, complete=False)
    purge = delete(tasks).where(
        tasks.c.task_id.in_(ids), old_and_finished, ~_needed_by_unfinished()
    )
    return Purged(int((await conn.execute(purge)).rowcount), complete=True)
