"""Data access with domain verbs: reading tasks, reconciliation cursors, the worker registry.
New tasks come in through admission.py; status changes live in transitions.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Integer,
    Select,
    String,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from app.database.tables import (
    READY_PREDICATE,
    attempts,
    dependencies,
    task_events,
    tasks,
    upsert_into,
    workers,
)
from app.models.task import AttemptOutcome, AttemptPublic, TaskEvent, TaskPublic, TaskStatus
from app.models.worker import WorkerPublic


async def get_task(
    conn: AsyncConnection, task_id: str, *, with_attempts: bool = True
) -> TaskPublic | None:
    row = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).first()
    if row is None:
        return None
    deps: list[str] = list(
        (
            await conn.execute(
                select(dependencies.c.depends_on).where(dependencies.c.task_id == task_id)
            )
        ).scalars()
    )
    task = to_public(row, deps)
    if with_attempts:
        task.attempts = await list_attempts(conn, task_id)
        if task.status == TaskStatus.RUNNING and task.attempt not in {
            a.attempt for a in task.attempts
        }:
            task.attempts.append(_running_attempt(task))
        task.events = await list_events(conn, task_id)
    return task


def _running_attempt(task: TaskPublic) -> AttemptPublic:
    """The attempt in progress, which has no history row until it ends (the task row holds it)."""
    return AttemptPublic(
        attempt=task.attempt,
        worker_id=task.worker_id,
        started_at=task.started_at,
        ended_at=None,
        outcome=AttemptOutcome.RUNNING,
        error=None,
    )


async def get_tasks(conn: AsyncConnection, task_ids: Sequence[str]) -> dict[str, TaskPublic]:
    """Several tasks with their dependencies, in two queries."""
    rows = (await conn.execute(select(tasks).where(tasks.c.task_id.in_(task_ids)))).all()
    edges = await conn.execute(
        select(dependencies.c.task_id, dependencies.c.depends_on).where(
            dependencies.c.task_id.in_(task_ids)
        )
    )
    deps: dict[str, list[str]] = {}
    for edge in edges:
        deps.setdefault(edge.task_id, []).append(edge.depends_on)
    return {r.task_id: to_public(r, deps.get(r.task_id, [])) for r in rows}


async def task_graph(
    conn: AsyncConnection, task_id: str, *, limit: int
) -> tuple[list[Row[Any]], list[Row[Any]]]:
    """The task's connected dependency graph: every ancestor and descendant, with the edges."""
    graph = text(
        """
        WITH RECURSIVE up(task_id) AS (
            SELECT CAST(:root AS VARCHAR(100))
            UNION SELECT d.depends_on FROM task_dependencies d JOIN up ON d.task_id = up.task_id
        ), down(task_id) AS (
            SELECT CAST(:root AS VARCHAR(100))
            UNION SELECT d.task_id FROM task_dependencies d JOIN down ON d.depends_on = down.task_id
        ), members(task_id) AS (SELECT task_id FROM up UNION SELECT task_id FROM down)
        SELECT t.task_id, t.task_type, t.status, t.priority FROM tasks t
        WHERE t.task_id IN (SELECT task_id FROM members) LIMIT :limit
        """
    )
    nodes = (await conn.execute(graph, {"root": task_id, "limit": limit})).all()
    ids = [n.task_id for n in nodes]
    edges = (
        await conn.execute(
            select(dependencies.c.task_id, dependencies.c.depends_on).where(
                dependencies.c.task_id.in_(ids), dependencies.c.depends_on.in_(ids)
            )
        )
    ).all()
    return list(nodes), list(edges)


async def list_attempts(conn: AsyncConnection, task_id: str) -> list[AttemptPublic]:
    rows = await conn.execute(
        select(attempts).where(attempts.c.task_id == task_id).order_by(attempts.c.attempt)
    )
    return [AttemptPublic.model_validate(r, from_attributes=True) for r in rows]


async def list_events(conn: AsyncConnection, task_id: str) -> list[TaskEvent]:
    rows = await conn.execute(
        select(task_events).where(task_events.c.task_id == task_id).order_by(task_events.c.id)
    )
    return [TaskEvent.model_validate(r, from_attributes=True) for r in rows]


async def record_event(
    conn: AsyncConnection,
    action: str,
    *,
    task_id: str | None,
    key_id: str | None,
    at: datetime,
    detail: dict[str, Any] | None = None,
) -> None:
    """Audit an operator action, in the transaction that made it (task_id None: not on a task)."""
    values = {"task_id": task_id, "at": at, "action": action, "key_id": key_id, "detail": detail}
    await conn.execute(task_events.insert().values(**values))


async def list_dependents(conn: AsyncConnection, task_id: str) -> list[str]:
    rows = await conn.execute(
        select(dependencies.c.task_id).where(dependencies.c.depends_on == task_id)
    )
    return list(rows.scalars())


@dataclass(frozen=True)
class Cursor:
    """Keyset position in a newest-first list: the (created_at, task_id) of the last row shown.
    Unlike OFFSET, the database seeks straight to it, so page 10 000 costs what page 1 costs."""

    created_at: datetime
    task_id: str


NEWEST_FIRST = (tasks.c.created_at.desc(), tasks.c.task_id.desc())


def fixed(value: str | int) -> ColumnElement[Any]:
    """A filter value written into the SQL text rather than bound. PostgreSQL then plans each
    (type, status) pair with its own statistics: a cached generic plan for `task_type = $1 AND
    status = $2` expects an average pair, and may walk the created_at index through every row
    when the pair is rare. Values are quoted by SQLAlchemy's literal rendering."""
    return literal(
        value, type_=Integer() if isinstance(value, int) else String(), literal_execute=True
    )


# The columns a page may be filtered on besides status, each with an index ending in
# (status, created_at) or cheap to filter on the way (priority).
FILTERABLE = {
    "task_type": tasks.c.task_type,
    "worker_id": tasks.c.worker_id,
    "priority": tasks.c.priority,
}


def _inline(name: str, type_: Any) -> Any:
    """A parameter whose value is written into the SQL text at execution (see fixed())."""
    return bindparam(name, type_=type_, literal_execute=True)


def _after() -> ColumnElement[bool]:
    # Spelt out rather than as a row-value comparison so that `created_at <= :c` stays a plain
    # range condition both backends can serve from the indexes ending in created_at.
    created_at = bindparam("after_created_at", type_=tasks.c.created_at.type)
    return and_(
        tasks.c.created_at <= created_at,
        or_(tasks.c.created_at < created_at, tasks.c.task_id < bindparam("after_task_id")),
    )


@dataclass(frozen=True)
class Page:
    """Which page of tasks to read, newest first."""

    filters: dict[str, str | int]  # FILTERABLE name -> value
    statuses: tuple[TaskStatus, ...] = ()
    after: Cursor | None = None
    limit: int = 50
    offset: int = 0

    def statement(self, columns: tuple[Any, ...]) -> tuple[Select[Any], dict[str, Any]]:
        """The query and its parameters: the statement is built once per shape of page (a split
        one costs SQLAlchemy about 5 ms to build and key), the values are bound each time."""
        indexed = {"task_type", "worker_id"} & self.filters.keys()
        split = len(self.statuses) > 1 or (not self.statuses and bool(indexed))
        shape = (columns, tuple(sorted(self.filters)), self.statuses, split, self.after is not None)
        params: dict[str, Any] = {**self.filters, "limit": self.limit, "offset": self.offset}
        if self.after is not None:
            params |= {
                "after_created_at": self.after.created_at,
                "after_task_id": self.after.task_id,
            }
        return _newest_first(*shape), params


@lru_cache(maxsize=256)
def _newest_first(
    columns: tuple[Any, ...],
    filters: tuple[str, ...],
    statuses: tuple[TaskStatus, ...],
    split: bool,
    after: bool,
) -> Select[Any]:
    """A page of tasks, newest first, that an index serves whatever the filters.

    The indexes end in (status, created_at). With one status the page is a backward range scan of
    one of them. With several statuses, or none but a type or worker (`split`), the page is one
    such scan per status, each stopped after `offset + limit` rows, then merged: the alternative,
    one index per filter without status, would cost an insert on every status change for each."""
    where = [FILTERABLE[name] == _inline(name, FILTERABLE[name].type) for name in filters]
    where += [_after()] if after else []
    # Inline too: a generic plan for LIMIT $1 guesses the limit, and may sort instead of scan.
    limit, offset = _inline("limit", Integer()), _inline("offset", Integer())
    if not split:
        where += [tasks.c.status == fixed(statuses[0].value)] if statuses else []
        return select(*columns).where(*where).order_by(*NEWEST_FIRST).limit(limit).offset(offset)
    # The branches select only the keys; the page's rows are joined to them by primary key.
    branches = [
        select(tasks.c.task_id, tasks.c.created_at)
        .where(*where, tasks.c.status == fixed(status.value))
        .order_by(*NEWEST_FIRST)
        .limit(limit + offset)
        .subquery()
        for status in statuses or tuple(TaskStatus)
    ]
    # SQLite accepts ORDER BY and LIMIT in a compound member only inside a subquery.
    merged = union_all(*(select(b.c.task_id, b.c.created_at) for b in branches)).subquery()
    keys = (
        select(merged.c.task_id)
        .order_by(merged.c.created_at.desc(), merged.c.task_id.desc())
        .limit(limit + offset)
        .subquery()
    )
    return (
        select(*columns)
        .join(keys, tasks.c.task_id == keys.c.task_id)
        .order_by(*NEWEST_FIRST)
        .limit(limit)
        .offset(offset)
    )


@dataclass
class TaskFilter:
    status: TaskStatus | None = None
    task_type: str | None = None
    worker_id: str | None = None

    def values(self) -> dict[str, str | int]:
        """The filters other than status, by FILTERABLE name."""
        found: dict[str, str | int] = {}
        if self.task_type is not None:
            found["task_type"] = self.task_type
        if self.worker_id is not None:
            found["worker_id"] = self.worker_id
        return found

    @property
    def countable(self) -> bool:
        """Whether one index holds every filtered column, so that a count reads only its
        entries. Type and worker together have none: counting them reads both ranges."""
        return self.task_type is None or self.worker_id is None


# GET /api/tasks counts matching tasks up to this many past the offset: exact for any list a
# person pages through, and a bounded index range however many tasks match (a full count(*)
# reads a million index entries).
COUNT_CAP = 10_000


@dataclass
class TaskListing:
    tasks: list[TaskPublic]
    total: int
    total_exact: bool  # false: at least `total` tasks match (the count stopped at the cap)
    more: bool  # more tasks follow this page


async def count_capped(conn: AsyncConnection, where: TaskFilter, *, cap: int) -> int:
    """Matching tasks, counted up to `cap`: a count over a LIMITed subquery stops reading there."""
    conditions = [FILTERABLE[name] == fixed(value) for name, value in where.values().items()]
    if where.status is not None:
        conditions.append(tasks.c.status == fixed(where.status.value))
    matching = (
        select(literal_column("1")).select_from(tasks).where(*conditions).limit(cap).subquery()
    )
    counted: int = (await conn.execute(select(func.count()).select_from(matching))).scalar_one()
    return counted


async def list_tasks(
    conn: AsyncConnection,
    where: TaskFilter,
    *,
    limit: int,
    offset: int = 0,
    after: Cursor | None = None,
) -> TaskListing:
    """A page of full tasks, newest first, by offset or after a keyset cursor (then offset is
    counted from the cursor). `total` is exact up to COUNT_CAP tasks past the offset when one
    index covers the filters; otherwise it is what this page shows (exact on the last page)."""
    page = Page(
        where.values(),
        statuses=() if where.status is None else (where.status,),
        after=after,
        limit=limit + 1,
        offset=offset,
    )
    rows = (await conn.execute(*page.statement((tasks,)))).all()
    found = [to_public(r, None) for r in rows[:limit]]
    more = len(rows) > limit
    if not where.countable:
        shown = offset + len(found)
        return TaskListing(found, total=shown + int(more), total_exact=not more, more=more)
    cap = offset + COUNT_CAP
    counted = await count_capped(conn, where, cap=cap + 1)
    return TaskListing(found, total=min(counted, cap), total_exact=counted <= cap, more=more)


async def dependency_results(
    conn: AsyncConnection, task_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Results of each task's dependencies, handed to handlers as `dependency_results`."""
    rows = await conn.execute(
        select(dependencies.c.task_id, dependencies.c.depends_on, tasks.c.result)
        .join(tasks, tasks.c.task_id == dependencies.c.depends_on)
        .where(dependencies.c.task_id.in_(task_ids))
    )
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r.task_id, {})[r.depends_on] = r.result
    return out


async def task_heads(conn: AsyncConnection, task_ids: Sequence[str]) -> dict[str, Row[Any]]:
    """Status, attempt and routing fields of several tasks, for sweeps and reconciliation."""
    rows = await conn.execute(
        select(
            tasks.c.task_id,
            tasks.c.status,
            tasks.c.attempt,
            tasks.c.task_type,
            tasks.c.priority,
            tasks.c.worker_id,
            tasks.c.scheduled_at,
            tasks.c.remaining_dependencies,
            tasks.c.started_at,
            tasks.c.timeout,
        ).where(tasks.c.task_id.in_(task_ids))
    )
    return {r.task_id: r for r in rows}


# READY_PREDICATE for SQLite. Without statistics (nothing runs ANALYZE) its planner reads every
# pending task through the status index and sorts them (55 ms at 23,000 pending) rather than
# walk the ready index in order (0.5 ms); likelihood() tells it `status = 'pending'` is not
# selective, and still lets the term match the partial index's predicate.
SQLITE_READY = "likelihood(status = 'pending', 0.9) AND remaining_dependencies = 0"


@dataclass(frozen=True)
class ReadyKey:
    """Position in the reconciliation index: (updated_at, task_id) of the last row read."""

    updated_at: datetime
    task_id: str

    def token(self) -> str:
        return f"{self.updated_at.isoformat()} {self.task_id}"

    @classmethod
    def parse(cls, token: str) -> ReadyKey | None:
        """The inverse of token(); None for the empty token (the start of the index)."""
        if not token:
            return None
        stamp, task_id = token.split(" ", 1)
        return cls(datetime.fromisoformat(stamp), task_id)


async def pending_ready_after(
    conn: AsyncConnection,
    after: ReadyKey | None,
    *,
    changed_before: datetime | None = None,
    limit: int,
) -> list[Row[Any]]:
    """A page of pending tasks with no open dependency in the order they last changed, from just
    after `after`, and only those changed before `changed_before` if given. It reads `limit`
    entries of ix_tasks_ready_updated_at, however many other tasks there are."""
    ready = READY_PREDICATE if conn.dialect.name == "postgresql" else SQLITE_READY
    query = select(
        tasks.c.task_id,
        tasks.c.task_type,
        tasks.c.priority,
        tasks.c.scheduled_at,
        tasks.c.updated_at,
    ).where(text(ready))
    if after is not None:
        # A row value, so that the seek is one index condition on (updated_at, task_id).
        query = query.where(
            tuple_(tasks.c.updated_at, tasks.c.task_id) > tuple_(after.updated_at, after.task_id)
        )
    if changed_before is not None:
        query = query.where(tasks.c.updated_at < changed_before)
    rows = await conn.execute(query.order_by(tasks.c.updated_at, tasks.c.task_id).limit(limit))
    return list(rows)


async def count_ready(conn: AsyncConnection, *, changed_before: datetime) -> int:
    """How many pending tasks with no open dependency last changed before `changed_before`: the
    size of one reconciliation pass. It counts entries of ix_tasks_ready_updated_at (an
    index-only scan on PostgreSQL), which costs a fraction of reading them for the pass."""
    ready = READY_PREDICATE if conn.dialect.name == "postgresql" else SQLITE_READY
    query = (
        select(func.count())
        .select_from(tasks)
        .where(text(ready), tasks.c.updated_at < changed_before)
    )
    return int((await conn.execute(query)).scalar_one())


async def running_past_lease(conn: AsyncConnection, now: datetime, *, limit: int) -> list[Row[Any]]:
    """Running tasks whose database lease ran out: the backstop for a Redis lease gone missing."""
    rows = await conn.execute(
        select(tasks.c.task_id, tasks.c.task_type, tasks.c.worker_id, tasks.c.attempt)
        .where(tasks.c.status == TaskStatus.RUNNING, tasks.c.lease_expires_at < now)
        .limit(limit)
    )
    return list(rows)


async def running_past_deadline(
    conn: AsyncConnection, now: datetime, *, grace: float, limit: int
) -> list[Row[Any]]:
    """Running tasks started longer ago than their timeout plus `grace` seconds."""
    if conn.dialect.name == "postgresql":
        seconds = func.make_interval(0, 0, 0, 0, 0, 0, tasks.c.timeout + grace)
        overdue = tasks.c.started_at + seconds < now
    else:  # SQLite keeps datetimes as text; julianday() counts days
        ends = func.julianday(tasks.c.started_at) + (tasks.c.timeout + grace) / 86400.0
        overdue = ends < func.julianday(now)
    rows = await conn.execute(
        select(
            tasks.c.task_id,
            tasks.c.task_type,
            tasks.c.worker_id,
            tasks.c.attempt,
            tasks.c.started_at,
            tasks.c.timeout,
        )
        .where(tasks.c.status == TaskStatus.RUNNING, overdue)
        .limit(limit)
    )
    return list(rows)


async def running_after(conn: AsyncConnection, after: str, *, limit: int) -> list[Row[Any]]:
    rows = await conn.execute(
        select(tasks.c.task_id, tasks.c.worker_id, tasks.c.attempt)
        .where(tasks.c.status == TaskStatus.RUNNING, tasks.c.task_id > after)
        .order_by(tasks.c.task_id)
        .limit(limit)
    )
    return list(rows)


def to_public(row: Row[Any] | dict[str, Any], deps: list[str] | None) -> TaskPublic:
    """A stored task as the API shows it (from a result row or the values just inserted)."""
    if isinstance(row, dict):
        return TaskPublic.model_validate({**row, "dependencies": deps or []})
    return TaskPublic(
        task_id=row.task_id,
        task_type=row.task_type,
        status=row.status,
        priority=row.priority,
        payload=row.payload,
        dependencies=deps or [],
        worker_id=row.worker_id,
        attempt=row.attempt,
        max_retries=row.max_retries,
        timeout=row.timeout,
        created_at=row.created_at,
        scheduled_at=row.scheduled_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        result=row.result,
        error=row.error,
        correlation_id=row.correlation_id,
    )


# --- workers -------------------------------------------------------------------------------


async def register_worker(conn: AsyncConnection, values: dict[str, Any]) -> WorkerPublic:
    """Insert or refresh a worker (a restarted worker keeps its id)."""
    statement = upsert_into(conn.dialect.name, workers).values(**values)
    updates = {k: statement.excluded[k] for k in values if k not in ("worker_id", "registered_at")}
    row = (
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[workers.c.worker_id], set_=updates
            ).returning(*workers.c)
        )
    ).one()
    return WorkerPublic.model_validate(row, from_attributes=True)


async def heartbeat_worker(
    conn: AsyncConnection, worker_id: str, values: dict[str, Any]
) -> WorkerPublic | None:
    """Record a heartbeat. A worker that went offline comes back with its next heartbeat, unless
    that heartbeat says it is draining: then it is a late one from a worker that has since shut
    down, and reviving it would list a departed worker as alive."""
    departed = and_(workers.c.status == "offline", literal(values["status"]) == "draining")
    row = (
        await conn.execute(
            update(workers)
            .where(workers.c.worker_id == worker_id, ~departed)
            .values(**values)
            .returning(*workers.c)
        )
    ).first()
    return None if row is None else WorkerPublic.model_validate(row, from_attributes=True)


async def extend_leases(
    conn: AsyncConnection, worker_id: str, task_ids: Sequence[str], *, until: datetime
) -> None:
    """Push the database lease of a worker's running tasks (backstop if Redis lost its own)."""
    if task_ids:
        await conn.execute(
            update(tasks)
            .where(
                tasks.c.task_id.in_(task_ids),
                tasks.c.worker_id == worker_id,
                tasks.c.status == TaskStatus.RUNNING,
            )
            .values(lease_expires_at=until)
        )


async def list_workers(conn: AsyncConnection) -> list[WorkerPublic]:
    rows = await conn.execute(select(workers).order_by(workers.c.worker_id))
    return [WorkerPublic.model_validate(r, from_attributes=True) for r in rows]


async def mark_workers_offline(conn: AsyncConnection, *, silent_since: datetime) -> list[str]:
    rows = await conn.execute(
        update(workers)
        .where(workers.c.last_heartbeat < silent_since, workers.c.status != "offline")
        .values(status="offline")
        .returning(workers.c.worker_id)
    )
    return list(rows.scalars())


async def set_worker_status(conn: AsyncConnection, worker_id: str, status: str) -> bool:
    rows = await conn.execute(
        update(workers)
        .where(workers.c.worker_id == worker_id)
        .values(status=status)
        .returning(workers.c.worker_id)
    )
    return rows.first() is not None
