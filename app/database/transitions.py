"""Every change of a task's status happens here, each as one guarded statement.

A guard names the status (and attempt) the task must still be in; no row back means the caller's
view is stale (a late report, a duplicate claim, a sweep that lost a race) and nothing changes.
The edges follow app.models.task.TRANSITIONS."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TextualSelect

from app.database import pg_exchange
from app.database.tables import attempts, dependencies, tasks, upsert_into
from app.models.task import FINAL_STATUSES, AttemptOutcome, ReadyTask, TaskStatus
from app.services import retry_policy
from app.services.retry_policy import RetryPolicy

P, R, C, F, X = (
    TaskStatus.PENDING,
    TaskStatus.RUNNING,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)


# What the transport needs to queue a task again (see _ready).
ROUTING = (tasks.c.task_id, tasks.c.task_type, tasks.c.priority, tasks.c.scheduled_at)


def _current(task_id: str, attempt: int, worker_id: str | None) -> list[ColumnElement[bool]]:
    """The guard of every ending of an attempt: still running, still this attempt, and, for a
    worker's report, still this worker's (the sweeper, acting for no worker, passes None)."""
    guard = [tasks.c.task_id == task_id, tasks.c.status == R, tasks.c.attempt == attempt]
    if worker_id is not None:
        guard.append(tasks.c.worker_id == worker_id)
    return guard


def _ready(row: Row[Any]) -> ReadyTask:
    return ReadyTask(row.task_id, row.task_type, row.priority, row.scheduled_at)


async def start(
    conn: AsyncConnection,
    task_ids: Sequence[str],
    *,
    worker_id: str,
    now: datetime,
    lease_until: datetime,
) -> list[Any]:
    """pending -> running for claimed tasks still pending, ready and due; each starts a numbered
    attempt. Rows of TO_RUN and has_dependencies.
    A task this worker already runs comes back as it is (same attempt, nothing written): a start
    whose answer was lost and is asked again must not turn the worker's own attempt away."""
    if not task_ids:
        return []
    if _dialect(conn) == "postgresql":
        _done, _ready, started = await complete_and_start(
            conn, [], task_ids, worker_id=worker_id, now=now, lease_until=lease_until
        )
        return started
    values = {"ids": list(task_ids), "by": worker_id, "at": now, "lease_until": lease_until}
    rows = list(await conn.execute(_start_statement(), values))
    if len(rows) < len(task_ids):
        rows += await _already_running(conn, task_ids, {r.task_id for r in rows}, worker_id)
    return rows


# What a worker needs to run an attempt (and when its task was created, for the queue wait).
TO_RUN = (
    tasks.c.task_id,
    tasks.c.task_type,
    tasks.c.payload,
    tasks.c.attempt,
    tasks.c.timeout,
    tasks.c.correlation_id,
    tasks.c.created_at,
)


@functools.cache
def _start_statement() -> Any:
    """The statement of `start` on SQLite (PostgreSQL's is in pg_exchange), built once.
    Startable: pending, no open dependency, and due (a stray queue entry of a task waiting out
    its backoff or its scheduled time must not start it early)."""
    claimed = tasks.c.task_id.in_(bindparam("ids", expanding=True))
    now = bindparam("at", type_=tasks.c.updated_at.type)
    due = or_(tasks.c.scheduled_at.is_(None), tasks.c.scheduled_at <= now)
    return (
        update(tasks)
        .where(claimed, tasks.c.status == P, tasks.c.remaining_dependencies == 0, due)
        .values(
            status=R,
            attempt=tasks.c.attempt + 1,
            worker_id=bindparam("by"),
            started_at=now,
            updated_at=now,
            lease_expires_at=bindparam("lease_until", type_=tasks.c.updated_at.type),
        )
        .returning(*STARTED)
    )


# `has_dependencies` saves the dependency-results query for the common task that has none.
# Literal SQL: SQLite's RETURNING renders columns unqualified, and a correlated subquery built
# from the tables came out as `task_id = task_id`, true for every task once any had a dependency.
STARTED = (
    *TO_RUN,
    literal_column(
        "EXISTS (SELECT 1 FROM task_dependencies AS d WHERE d.task_id = tasks.task_id)", Boolean
    ).label("has_dependencies"),
)


async def _already_running(
    conn: AsyncConnection, task_ids: Sequence[str], started: set[str], worker_id: str
) -> list[Row[Any]]:
    others = [t for t in task_ids if t not in started]
    found = await conn.execute(
        select(*STARTED).where(
            tasks.c.task_id.in_(others), tasks.c.status == R, tasks.c.worker_id == worker_id
        )
    )
    return list(found)


@dataclass(frozen=True, slots=True)
class Completion:
    task_id: str
    attempt: int
    result: Any


async def complete_many(
    conn: AsyncConnection, done: Sequence[Completion], *, worker_id: str, now: datetime
) -> tuple[list[str], list[ReadyTask]]:
    """running -> completed for a batch of reports, in one statement guarded per row (current
    attempt, still running, run by this worker); their attempts are closed with them. Returns
    the ids recorded (the others were stale) and the dependents this made ready."""
    if not done:
        return [], []
    if _dialect(conn) == "postgresql":
        completed, released, _started = await complete_and_start(
            conn, done, [], worker_id=worker_id, now=now, lease_until=now
        )
        return completed, released
    source, params = values_source("v", ("task_id", "attempt", "result"), completed_values(done))
    statement = _complete_statement(source)
    rows = (await conn.execute(statement, {**params, "now": now, "worker_id": worker_id})).all()
    await end_attempts(conn, [_ended(r, AttemptOutcome.COMPLETED) for r in rows], now=now)
    ready: list[ReadyTask] = []
    for r in rows:
        if r.has_dependents:
            ready += await _release_dependents(conn, r.task_id, now)
    return [r.task_id for r in rows], ready


def completed_values(done: Sequence[Completion]) -> list[tuple[str, int, str]]:
    return [(c.task_id, c.attempt, _json_text(c.result)) for c in done]


async def complete_and_start(
    conn: AsyncConnection,
    done: Sequence[Completion],
    claims: Sequence[str],
    *,
    worker_id: str,
    now: datetime,
    lease_until: datetime,
) -> tuple[list[str], list[ReadyTask], list[Any]]:
    """complete_many, then start: the ids completed, the dependents made ready, the rows
    started. On PostgreSQL one statement (pg_exchange), atomic on its own: the caller may run it
    outside a transaction (Database.writing(one_statement=True))."""
    if not done and not claims:
        return [], [], []
    if _dialect(conn) == "postgresql":
        params = pg_exchange.values(
            completed_values(done), claims, worker_id=worker_id, now=now, lease_until=lease_until
        )
        answer = await pg_exchange.run(conn, params)
        return answer.completed, answer.ready, list(answer.started)
    completed, ready = await complete_many(conn, done, worker_id=worker_id, now=now)
    started = await start(conn, claims, worker_id=worker_id, now=now, lease_until=lease_until)
    return completed, ready, started


@functools.lru_cache(maxsize=256)
def _complete_statement(source: str) -> TextualSelect:
    """The statement of complete_many on SQLite (PostgreSQL's is in pg_exchange), built once
    per row source."""
    complete = f"""
        UPDATE tasks SET status = 'completed', result = v.result, error = NULL,
            completed_at = :now, updated_at = :now, lease_expires_at = NULL
        FROM {source}
        WHERE tasks.task_id = v.task_id AND tasks.attempt = v.attempt
            AND tasks.status = 'running' AND tasks.worker_id = :worker_id
        RETURNING tasks.task_id, tasks.attempt, tasks.worker_id, tasks.started_at,
            tasks.has_dependents
    """
    return (
        text(complete)
        .bindparams(bindparam("now", type_=tasks.c.updated_at.type))
        .columns(*ATTEMPT_OF, tasks.c.has_dependents)
    )


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
    policy: RetryPolicy,
    now: datetime,
    worker_id: str | None = None,
) -> ReadyTask | None:
    """running -> pending, to run again when the policy says, while the task's allowance for
    this kind of ending lasts. None when it is used up (the caller then fails the task) or the
    report is stale."""
    head = await _running_attempt(conn, task_id, attempt, worker_id)
    if head is None:
        return None
    delay = policy.delay(
        outcome, errors=head.errors, losses=head.losses, max_retries=head.max_retries
    )
    if delay is None:
        return None
    row = (
        await conn.execute(
            update(tasks)
            .where(*_current(task_id, attempt, worker_id))
            .values(
                status=P,
                worker_id=None,
                error=error,
                scheduled_at=now + timedelta(seconds=delay),
                updated_at=now,
                lease_expires_at=None,
            )
            .returning(*ROUTING)
        )
    ).first()
    if row is None:
        return None
    await end_attempts(conn, [_ended(head, outcome, error)], now=now)
    return _ready(row)


def _count_ended(outcomes: Sequence[AttemptOutcome]) -> ColumnElement[int]:
    """How many attempts since the last manual retry ended with one of `outcomes`."""
    return (
        select(func.count())
        .where(
            attempts.c.task_id == tasks.c.task_id,
            attempts.c.attempt > tasks.c.attempt_base,
            attempts.c.outcome.in_([str(o) for o in outcomes]),
        )
        .correlate(tasks)
        .scalar_subquery()
    )


async def _running_attempt(
    conn: AsyncConnection, task_id: str, attempt: int, worker_id: str | None
) -> Row[Any] | None:
    """The running attempt (who runs it, since when) and what its task has used up, or None
    when the attempt is no longer the current one."""
    found = await conn.execute(
        select(
            *ATTEMPT_OF,
            tasks.c.max_retries,
            _count_ended(sorted(retry_policy.RETRYABLE)).label("errors"),
            _count_ended([AttemptOutcome.WORKER_LOST]).label("losses"),
        ).where(*_current(task_id, attempt, worker_id))
    )
    return found.first()


async def fail(
    conn: AsyncConnection,
    task_id: str,
    attempt: int,
    *,
    outcome: AttemptOutcome,
    error: str | None,
    now: datetime,
    worker_id: str | None = None,
) -> list[str] | None:
    """running -> failed for the current attempt; its pending dependents fail with it.
    Returns the ids of the dependents that failed, or None when the report was stale."""
    row = (
        await conn.execute(
            update(tasks)
            .where(*_current(task_id, attempt, worker_id))
            .values(status=F, error=error, completed_at=now, updated_at=now, lease_expires_at=None)
            .returning(*ATTEMPT_OF, tasks.c.has_dependents)
        )
    ).first()
    if row is None:
        return None
    await end_attempts(conn, [_ended(row, outcome, error)], now=now)
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
    worker_id: str | None = None,
) -> ReadyTask | None:
    """running -> pending at once: the attempt ended without a verdict (handed back)."""
    head = await _running_attempt(conn, task_id, attempt, worker_id)
    if head is None:
        return None
    row = (
        await conn.execute(
            update(tasks)
            .where(*_current(task_id, attempt, worker_id))
            .values(
                status=P, worker_id=None, scheduled_at=None, updated_at=now, lease_expires_at=None
            )
            .returning(*ROUTING)
        )
    ).first()
    if row is None:
        return None
    await end_attempts(conn, [_ended(head, outcome, error)], now=now)
    return _ready(row)


# Who ran an attempt and since when: what its history row needs besides how it ended.
ATTEMPT_OF = (tasks.c.task_id, tasks.c.attempt, tasks.c.worker_id, tasks.c.started_at)


@dataclass(frozen=True, slots=True)
class Ended:
    """An attempt that ended, as its history row records it."""

    task_id: str
    attempt: int
    worker_id: str | None
    started_at: datetime | None
    outcome: AttemptOutcome
    error: str | None = None


def _ended(row: Row[Any], outcome: AttemptOutcome, error: str | None = None) -> Ended:
    """The history row of the attempt `row` (task_id, attempt, worker_id, started_at) ran."""
    return Ended(row.task_id, row.attempt, row.worker_id, row.started_at, outcome, error)


async def end_attempts(conn: AsyncConnection, ended: Sequence[Ended], *, now: datetime) -> None:
    """Write the history rows of attempts that ended, in one statement. Rows are written once,
    at the end; a row may already exist only as 'running' (written at the start by earlier
    versions, for attempts that were running during the upgrade), and only such a row is
    completed: the history of a finished attempt is never rewritten."""
    if not ended:
        return
    rows = [
        {
            "task_id": e.task_id,
            "attempt": e.attempt,
            "worker_id": e.worker_id,
            "started_at": e.started_at,
            "ended_at": now,
            "outcome": str(e.outcome),
            "error": e.error,
        }
        for e in ended
    ]
    await conn.execute(_end_attempts_statement(_dialect(conn)), rows)


@functools.lru_cache(maxsize=2)
def _end_attempts_statement(dialect: str) -> Any:
    """Built once per dialect: building `excluded` anew cost more than running the insert."""
    statement = upsert_into(dialect, attempts)
    return statement.on_conflict_do_update(
        index_elements=[attempts.c.task_id, attempts.c.attempt],
        set_={
            "outcome": statement.excluded.outcome,
            "error": statement.excluded.error,
            "ended_at": statement.excluded.ended_at,
        },
        where=attempts.c.outcome == AttemptOutcome.RUNNING,
    )


def _dialect(conn: AsyncConnection) -> str:
    return conn.dialect.name


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def values_source(
    name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> tuple[str, dict[str, Any]]:
    """SQLite: a FROM item named `name` with `columns` holding `rows` (a VALUES list: SQLite has
    no arrays; PostgreSQL's set-based statements take one array per column), and its bind
    parameters."""
    params = {f"{name}_{r}_{i}": value for r, row in enumerate(rows) for i, value in enumerate(row)}
    values = ", ".join(
        "(" + ", ".join(f":{name}_{r}_{i}" for i in range(len(columns))) + ")"
        for r in range(len(rows))
    )
    aliases = ", ".join(f"column{i + 1} AS {c}" for i, c in enumerate(columns))
    return f"(SELECT {aliases} FROM (VALUES {values})) AS {name}", params


async def expire_unroutable(
    conn: AsyncConnection, *, live_types: Sequence[str], waited_since: datetime, now: datetime
) -> list[str]:
    """pending -> failed for tasks that waited since before `waited_since` for a type no live
    worker can run (a page at a time); their dependents fail with them. Returns every id
    failed."""
    rows = (
        await conn.execute(
            update(tasks)
            .where(
                tasks.c.task_id.in_(
                    select(tasks.c.task_id)
                    .where(
                        tasks.c.status == P,
                        tasks.c.created_at < waited_since,
                        tasks.c.task_type.not_in(list(live_types)),
                    )
                    .limit(1000)
                    .scalar_subquery()
                ),
                tasks.c.status == P,
            )
            .values(
                status=F,
                error=literal("no live worker can run task type '") + tasks.c.task_type + "'",
                completed_at=now,
                updated_at=now,
            )
            .returning(tasks.c.task_id, tasks.c.has_dependents)
        )
    ).all()
    failed = [r.task_id for r in rows]
    for r in rows:
        if r.has_dependents:
            reason = f"dependency '{r.task_id}' failed"
            failed += await end_dependents(conn, r.task_id, status=F, reason=reason, now=now)
    return failed


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
                select(*ATTEMPT_OF, tasks.c.status, tasks.c.has_dependents).where(
                    tasks.c.task_id == task_id
                )
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
        ended = _ended(head, AttemptOutcome.CANCELLED, "cancelled by request")
        await end_attempts(conn, [ended], now=now)
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
