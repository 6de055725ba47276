"""Read-only aggregates for the dashboard. Every query is bounded by an index on `tasks`:
(task_type, status, created_at) for the counts, completed_at for tasks that finished in a window,
created_at for submissions, and the indexes ending in (status, created_at) for paging.

Timestamps become numbers in SQL only where rows must be grouped by time (the buckets); what
differs between SQLite and PostgreSQL is `_epoch` and `_bin`. Percentiles are computed by the
caller from histograms or bounded samples, because the two backends share no percentile
function."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, Integer, Select, Text, and_, bindparam, case, cast, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from app.database.repositories import Cursor, Page
from app.database.tables import tasks
from app.models.task import TaskStatus

FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
JULIAN_UNIX_EPOCH = 2440587.5  # julianday('1970-01-01')
RESULT_PREVIEW = 200


def _epoch(column: Any, dialect: str) -> ColumnElement[Any]:
    """Seconds since 1970 as a float. SQLite stores UTC text, PostgreSQL a timestamptz.
    date_part, not EXTRACT: EXTRACT returns numeric, and numeric arithmetic on every row of a
    day's window cost about half of the time series' time."""
    if dialect == "postgresql":
        return cast(func.date_part("epoch", column), Float())
    return (func.julianday(column) - JULIAN_UNIX_EPOCH) * 86400.0


def _bucket(column: Any, *, since: datetime, seconds: int, dialect: str) -> ColumnElement[int]:
    """Index of the time bucket a timestamp falls in; buckets start at `since`. Rows are filtered
    to `column >= since`, so the offset is never negative and a truncating cast is a floor."""
    offset = (_epoch(column, dialect) - since.timestamp()) / float(seconds)
    if dialect == "postgresql":
        return cast(func.floor(offset), Integer)
    return cast(offset, Integer)


async def counts_by_type_and_status(conn: AsyncConnection) -> list[Row[Any]]:
    """(task_type, status, n) for every pair: an index-only scan of (task_type, status)."""
    query = select(tasks.c.task_type, tasks.c.status, func.count().label("n")).group_by(
        tasks.c.task_type, tasks.c.status
    )
    return list(await conn.execute(query))


async def pending_by_priority(conn: AsyncConnection) -> list[Row[Any]]:
    """(priority, n) of pending tasks: reads only the pending range of (status, created_at)."""
    query = (
        select(tasks.c.priority, func.count().label("n"))
        .where(tasks.c.status == TaskStatus.PENDING)
        .group_by(tasks.c.priority)
    )
    return list(await conn.execute(query))


@dataclass(frozen=True)
class Window:
    """A time window cut into equal buckets."""

    since: datetime
    until: datetime
    bucket_seconds: int

    @property
    def buckets(self) -> int:
        span = (self.until - self.since).total_seconds()
        return max(1, -(-int(span) // self.bucket_seconds))

    def bucket_start(self, index: int) -> datetime:
        return self.since + timedelta(seconds=index * self.bucket_seconds)


def _finished_in(window: Window) -> ColumnElement[bool]:
    """Tasks that reached a final status in the window, however long ago they were submitted: a
    range of ix_tasks_finished_completed_at (only finished tasks have completed_at)."""
    return and_(
        tasks.c.completed_at >= window.since,
        tasks.c.completed_at < window.until,
        tasks.c.status.in_(FINISHED),
    )


# Upper edges (seconds) of the latency histogram bins, 1-2.5-5 per decade from 1 ms to ~3 h; the
# bin past the last edge is open. Percentiles are interpolated within a bin (as Prometheus's
# histogram_quantile does), so an estimate is off by at most the width of its bin.
LATENCY_EDGES: tuple[float, ...] = (
    *(m * 10.0**e for e in range(-3, 4) for m in (1.0, 2.5, 5.0)),
    10_000.0,
)


def _case_bin(seconds: Any) -> ColumnElement[int]:
    """Index of the LATENCY_EDGES bin that a duration falls in; NULL when it is NULL."""
    return case(
        (seconds.is_(None), None),
        *((seconds < edge, i) for i, edge in enumerate(LATENCY_EDGES)),
        else_=len(LATENCY_EDGES),
    )


def _binned_postgresql(window: Window) -> Select[Any]:
    """(bucket, status, wait_bin, run_bin) per finished task. width_bucket finds the bin by binary
    search in C, where the portable CASE tests up to 23 conditions per duration."""
    edges = bindparam("edges", list(LATENCY_EDGES), type_=ARRAY(Float()))
    created, started, ended = (
        _epoch(column, "postgresql")
        for column in (tasks.c.created_at, tasks.c.started_at, tasks.c.completed_at)
    )
    bucket = _bucket(
        tasks.c.completed_at,
        since=window.since,
        seconds=window.bucket_seconds,
        dialect="postgresql",
    )
    return select(
        bucket.label("bucket"),
        tasks.c.status,
        func.width_bucket(started - created, edges).label("wait_bin"),
        func.width_bucket(ended - started, edges).label("run_bin"),
    ).where(_finished_in(window))


def _binned_sqlite(window: Window) -> Select[Any]:
    """As _binned_postgresql, with portable CASE bins. The durations are a MATERIALIZED CTE:
    inlined, every CASE branch would recompute them from the timestamps."""
    created, started, ended = (
        _epoch(column, "sqlite")
        for column in (tasks.c.created_at, tasks.c.started_at, tasks.c.completed_at)
    )
    durations = (
        select(
            _bucket(
                tasks.c.completed_at,
                since=window.since,
                seconds=window.bucket_seconds,
                dialect="sqlite",
            ).label("bucket"),
            tasks.c.status,
            (started - created).label("wait"),
            (ended - started).label("run"),
        )
        # Status is tested outside: given `status IN (...)` as well, SQLite's planner reads the
        # status range (every finished task) rather than the window's range of completed_at,
        # 500 ms against 20 ms for an hour's window at a million tasks.
        .where(tasks.c.completed_at >= window.since, tasks.c.completed_at < window.until)
        .cte("durations")
        .prefix_with("MATERIALIZED")
    )
    return select(
        durations.c.bucket,
        durations.c.status,
        _case_bin(durations.c.wait).label("wait_bin"),
        _case_bin(durations.c.run).label("run_bin"),
    ).where(durations.c.status.in_(FINISHED))


async def finished_histogram(conn: AsyncConnection, window: Window) -> list[Row[Any]]:
    """(bucket, status, wait_bin, run_bin, n): tasks that reached a final status in each bucket,
    with histograms of their queue wait (created -> started) and run time (started -> ended).

    One pass over the window gives exact counts and bounded-error percentiles; the alternative,
    a sample of rows ranked per bucket, cost over a second at a million tasks (the ranking sort
    and turning every sampled timestamp into a Python datetime)."""
    if conn.dialect.name == "postgresql":
        binned = _binned_postgresql(window).subquery()
    else:
        binned = _binned_sqlite(window).subquery()
    keys = (binned.c.bucket, binned.c.status, binned.c.wait_bin, binned.c.run_bin)
    query = select(*keys, func.count().label("n")).group_by(*keys)
    return list(await conn.execute(query))


async def submitted_per_bucket(conn: AsyncConnection, window: Window) -> list[Row[Any]]:
    """(bucket, n) of tasks submitted in each bucket: a range of the created_at index."""
    bucket = _bucket(
        tasks.c.created_at,
        since=window.since,
        seconds=window.bucket_seconds,
        dialect=conn.dialect.name,
    ).label("bucket")
    query = (
        select(bucket, func.count().label("n"))
        .where(tasks.c.created_at >= window.since, tasks.c.created_at < window.until)
        .group_by(bucket)
    )
    return list(await conn.execute(query))


async def recent_runs(conn: AsyncConnection, *, since: datetime, limit: int) -> list[Row[Any]]:
    """(task_type, status, created_at, started_at, completed_at) of the latest `limit` tasks
    submitted since `since` that ran and finished (completed or failed), newest first."""
    query = (
        select(
            tasks.c.task_type,
            tasks.c.status,
            tasks.c.created_at,
            tasks.c.started_at,
            tasks.c.completed_at,
        )
        .where(
            tasks.c.status.in_((TaskStatus.COMPLETED, TaskStatus.FAILED)),
            tasks.c.created_at >= since,
            tasks.c.started_at.is_not(None),
            tasks.c.completed_at.is_not(None),
        )
        .order_by(tasks.c.created_at.desc())
        .limit(limit)
    )
    return list(await conn.execute(query))


@dataclass(frozen=True)
class PageFilter:
    statuses: Sequence[TaskStatus] = ()
    task_type: str | None = None
    worker_id: str | None = None
    priority: int | None = None


def _values(where: PageFilter) -> dict[str, str | int]:
    found: dict[str, str | int] = {}
    if where.task_type is not None:
        found["task_type"] = where.task_type
    if where.worker_id is not None:
        found["worker_id"] = where.worker_id
    if where.priority is not None:
        found["priority"] = where.priority
    return found


# What a row of the dashboard's task table holds. No payload, and the result only as its first
# RESULT_PREVIEW characters of JSON text, cut in SQL: a page of large results would otherwise
# cost megabytes. One tuple for the module's life, so that its statements are built once.
SUMMARY_COLUMNS = (
    tasks.c.task_id,
    tasks.c.task_type,
    tasks.c.status,
    tasks.c.priority,
    tasks.c.worker_id,
    tasks.c.attempt,
    tasks.c.max_retries,
    tasks.c.created_at,
    tasks.c.started_at,
    tasks.c.completed_at,
    tasks.c.error,
    func.substr(cast(tasks.c.result, Text), 1, RESULT_PREVIEW).label("result_preview"),
)


async def task_page(
    conn: AsyncConnection, where: PageFilter, *, after: Cursor | None, limit: int
) -> list[Row[Any]]:
    """One page of task summaries (SUMMARY_COLUMNS), newest first, with one row more than asked
    when more follow."""
    page = Page(
        _values(where),
        statuses=tuple(dict.fromkeys(where.statuses)),
        after=after,
        limit=limit + 1,
    )
    return list(await conn.execute(*page.statement(SUMMARY_COLUMNS)))
