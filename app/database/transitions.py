"""Every change of a task's status happens here, each as one guarded statement.

A guard names the status (and attempt) the task must still be in; no row back means the caller's
view is stale (a late report, a duplicate claim, a sweep that lost a race) and nothing changes.
The edges follow app.models.task.TRANSITIONS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app.database.tables import attempts, dependencies, tasks
from app.models.task import FINAL_STATUSES, AttemptOutcome, ReadyTask, TaskStatus

P, R, C, F, X = (
    TaskStatus.PENDING,
    TaskStatus.RUNNING,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)


# What the transport needs to queue a task again (see _ready).
ROUTING = (tasks.c.task_id, tasks.c.task_type, tasks.c.priority, tasks.c.scheduled_at)


def _ready(row: Row[Any]) -> ReadyTask:
    return ReadyTask(row.task_id, row.task_type, row.priority, row.scheduled_at)


async def start(
    conn: AsyncConnection,
    task_ids: Sequence[str],
    *,
    worker_id: str,
    now: datetime,
    lease_until: datetime,
) -> list[Row[Any]]:
    """pending -> running for claimed tasks still pending and ready; opens an attempt each."""
    # One statement for the whole claim batch; attempt + 1 is the fencing token of this run.
    rows = (
        await conn.execute(
            update(tasks)
            .where(
                tasks.c.task_id.in_(task_ids),
                tasks.c.status == P,
                tasks.c.remaining_dependencies == 0,
            )
            .values(
                status=R,
                attempt=tasks.c.attempt + 1,
                worker_id=worker_id,
                started_at=now,
                updated_at=now,
                lease_expires_at=lease_until,
            )
            .returning(
                tasks.c.task_id,
                tasks.c.task_type,
                tasks.c.payload,
                tasks.c.attempt,
                tasks.c.timeout,
                tasks.c.correlation_id,
                tasks.c.created_at,
            )
        )
    ).all()
    if rows:
        # Records this attempt's start; its end is filled in by _end_attempt.
        await conn.execute(
            insert(attempts),
            [
                {
                    "task_id": r.task_id,
                    "attempt": r.attempt,
                    "worker_id": worker_id,
                    "started_at": now,
                    "outcome": AttemptOutcome.RUNNING,
                }
                for r in rows
            ],
        )
    return list(rows)


async def complete(
    conn: AsyncConnection, task_id: str, attempt: int, *, result: Any, now: datetime
) -> list[ReadyTask] | None:
    """running -> completed for the current attempt. Returns the dependents this made ready,
    or None when the report was stale."""
    row = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == task_id, tasks.c.status == R, tasks.c.attempt == attempt)
            .values(
                status=C,
                result=result,
                error=None,
                completed_at=now,
                updated_at=now,
                lease_expires_at=None,
            )
            .returning(tasks.c.has_dependents)
        )
    ).first()
    if row is None:
        return None
    await _end_attempt(conn, task_id, attempt, AttemptOutcome.COMPLETED, None, now)
    return await _release_dependents(conn, task_id, now) if row.has_dependents else []


async def _release_dependents(
    conn: AsyncConnection, task_id: str, now: datetime
) -> list[ReadyTask]:
    # Row locks serialise concurrent completions of a shared dependent, so exactly one of them
    # sees the counter reach zero and queues it.
    waiting = select(dependencies.c.task_id).where(dependencies.c.depends_on == task_id)
    rows = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id.in_(waiting), tasks.c.status == P)
            .values(remaining_dependencies=tasks.c.remaining_dependencies - 1, updated_at=now)
            .returning(*ROUTING, tasks.c.remaining_dependencies)
        )
    ).all()
    return [_ready(r) for r in rows if r.remaining_dependencies == 0]


async def retry(
    conn: AsyncConnection,
    task_id: str,
    attempt: int,
    *,
    outcome: AttemptOutcome,
    error: str | None,
    run_at: datetime,
    now: datetime,
    extra_attempts: int = 0,
) -> ReadyTask | None:
    """running -> pending (to run again at run_at) while attempts remain; None when none remain
    or the report is stale. `extra_attempts` allows re-runs beyond max_retries (lost workers)."""
    row = (
        await conn.execute(
            update(tasks)
            .where(
                tasks.c.task_id == task_id,
                tasks.c.status == R,
                tasks.c.attempt == attempt,
                tasks.c.attempt - tasks.c.attempt_base <= tasks.c.max_retries + extra_attempts,
            )
            .values(
                status=P,
                worker_id=None,
                error=error,
                scheduled_at=run_at,
                updated_at=now,
                lease_expires_at=None,
            )
            .returning(*ROUTING)
        )
    ).first()
    if row is None:
        return None
    await _end_attempt(conn, task_id, attempt, outcome, error, now)
    return _ready(row)


async def fail(
    conn: AsyncConnection,
    task_id: str,
    attempt: int,
    *,
    outcome: AttemptOutcome,
    error: str | None,
    now: datetime,
) -> list[str] | None:
    """running -> failed for the current attempt; its pending dependents fail with it.
    Returns the ids of the dependents that failed, or None when the report was stale."""
    row = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == task_id, tasks.c.status == R, tasks.c.attempt == attempt)
            .values(status=F, error=error, completed_at=now, updated_at=now, lease_expires_at=None)
            .returning(tasks.c.has_dependents)
        )
    ).first()
    if row is None:
        return None
    await _end_attempt(conn, task_id, attempt, outcome, error, now)
    if not row.has_dependents:
        return []
    return await end_dependents(
        conn, task_id, status=F, reason=f"dependency '{task_id}' failed", now=now
    )


async def end_dependents(
    conn: AsyncConnection, task_id: str, *, status: TaskStatus, reason: str, now: datetime
) -> list[str]:
    """pending -> failed/cancelled for every task that (transitively) waits on task_id, so that no
    dependent waits forever for a dependency that will never complete."""
    statement = text(
        """
        WITH RECURSIVE doomed(task_id) AS (
            SELECT task_id FROM task_dependencies WHERE depends_on = :root
            UNION
            SELECT d.task_id FROM task_dependencies d JOIN doomed ON d.depends_on = doomed.task_id
        )
        UPDATE tasks SET status = :status, error = :reason, completed_at = :now, updated_at = :now
        WHERE status = 'pending' AND task_id IN (SELECT task_id FROM doomed)
        RETURNING task_id
        """
    ).bindparams(bindparam("now", type_=tasks.c.updated_at.type))
    rows = await conn.execute(
        statement, {"root": task_id, "status": status.value, "reason": reason, "now": now}
    )
    return [r.task_id for r in rows]


async def requeue(
    conn: AsyncConnection,
    task_id: str,
    attempt: int,
    *,
    outcome: AttemptOutcome,
    now: datetime,
    error: str | None = None,
) -> ReadyTask | None:
    """running -> pending at once: the attempt ended without a verdict (handed back)."""
    row = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == task_id, tasks.c.status == R, tasks.c.attempt == attempt)
            .values(
                status=P, worker_id=None, scheduled_at=None, updated_at=now, lease_expires_at=None
            )
            .returning(*ROUTING)
        )
    ).first()
    if row is None:
        return None
    await _end_attempt(conn, task_id, attempt, outcome, error, now)
    return _ready(row)


async def _end_attempt(
    conn: AsyncConnection,
    task_id: str,
    attempt: int,
    outcome: AttemptOutcome,
    error: str | None,
    now: datetime,
) -> None:
    # Only an open attempt is closed: the history of a finished attempt is never rewritten.
    await conn.execute(
        update(attempts)
        .where(
            and_(attempts.c.task_id == task_id, attempts.c.attempt == attempt),
            attempts.c.outcome == AttemptOutcome.RUNNING,
        )
        .values(outcome=outcome, error=error, ended_at=now)
    )


@dataclass(frozen=True)
class Cancelled:
    previous: TaskStatus
    attempt: int
    worker_id: str | None
    dependents: list[str]


class UnknownTask(LookupError):
    pass


async def cancel(conn: AsyncConnection, task_id: str, *, now: datetime) -> Cancelled | TaskStatus:
    """pending/running -> cancelled; dependents follow as cancelled. Returns what was cancelled,
    or the final status when there was nothing left to cancel."""
    for _ in range(3):  # the task may move under us; re-read and try again
        head = (
            await conn.execute(
                select(
                    tasks.c.status, tasks.c.attempt, tasks.c.worker_id, tasks.c.has_dependents
                ).where(tasks.c.task_id == task_id)
            )
        ).first()
        if head is None:
            raise UnknownTask(task_id)
        if TaskStatus(head.status) in FINAL_STATUSES:
            return TaskStatus(head.status)
        changed = await conn.execute(
            update(tasks)
            .where(
                tasks.c.task_id == task_id,
                tasks.c.status == head.status,
                tasks.c.attempt == head.attempt,
            )
            .values(
                status=X,
                error="cancelled by request",
                completed_at=now,
                updated_at=now,
                lease_expires_at=None,
            )
        )
        if changed.rowcount == 1:
            break
    else:
        raise RuntimeError(f"task '{task_id}' kept changing while being cancelled")
    if head.status == R:
        await _end_attempt(
            conn, task_id, head.attempt, AttemptOutcome.CANCELLED, "cancelled by request", now
        )
    dependents = []
    if head.has_dependents:
        reason = f"dependency '{task_id}' was cancelled"
        dependents = await end_dependents(conn, task_id, status=X, reason=reason, now=now)
    return Cancelled(TaskStatus(head.status), head.attempt, head.worker_id, dependents)


class NotRetryable(Exception):
    pass


async def manual_retry(conn: AsyncConnection, task_id: str, *, now: datetime) -> ReadyTask | None:
    """failed/cancelled -> pending by hand, with a fresh allowance of retries. Refused while a
    dependency is itself failed or cancelled (retry that one first). Returns the task to queue,
    or None while it still waits for dependencies."""
    head = (await conn.execute(select(tasks.c.status).where(tasks.c.task_id == task_id))).first()
    if head is None:
        raise UnknownTask(task_id)
    if TaskStatus(head.status) not in (F, X):
        raise NotRetryable(
            f"task '{task_id}' is {head.status}; only failed or cancelled tasks can be retried"
        )
    # Locks the dependency rows (as admission does) so none completes unseen between read and write.
    parents = select(dependencies.c.depends_on).where(dependencies.c.task_id == task_id)
    deps = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id.in_(parents))
            .values(has_dependents=True)
            .returning(tasks.c.task_id, tasks.c.status)
        )
    ).all()
    broken = sorted(d.task_id for d in deps if d.status in (F, X))
    if broken:
        raise NotRetryable(f"dependency '{broken[0]}' is not completed; retry it first")
    row = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == task_id, tasks.c.status.in_([F, X]))
            .values(
                status=P,
                attempt_base=tasks.c.attempt,
                error=None,
                result=None,
                worker_id=None,
                completed_at=None,
                scheduled_at=None,
                updated_at=now,
                remaining_dependencies=sum(1 for d in deps if d.status != C),
            )
            .returning(*ROUTING, tasks.c.remaining_dependencies)
        )
    ).first()
    if row is None:
        raise NotRetryable(f"task '{task_id}' changed while being retried")
    return _ready(row) if row.remaining_dependencies == 0 else None
