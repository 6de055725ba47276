"""Read-only aggregates for the dashboard: cheap to poll every few seconds with a million tasks.

The SQL lives in app.database.stats; this module turns rows into the response shapes and computes
percentiles over the bounded samples those queries return."""

from __future__ import annotations

import base64
import binascii
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from redis.exceptions import RedisError

from app.api.deps import DatabaseDep, SettingsDep
from app.api.errors import field_error
from app.config import Settings
from app.database import repositories as repo
from app.database import stats as sql
from app.models.task import NAME_PATTERN, TaskStatus
from app.models.worker import WorkerPublic, WorkerStatus
from app.services.message_queue import RedisQueue

router = APIRouter(prefix="/api/stats", tags=["stats"])

MAX_BUCKETS = 1440


# --- response shapes --------------------------------------------------------------------------


class TypeCounts(BaseModel):
    task_type: str
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class PriorityCount(BaseModel):
    priority: int
    pending: int


class QueueState(BaseModel):
    """What Redis holds now. `available` is false (and the counts empty) when Redis is down."""

    available: bool
    error: str | None = None
    ready_by_type: dict[str, int] = {}
    delayed: int = 0
    leased: int = 0


class WorkerSummary(BaseModel):
    total: int
    live: int
    offline: int
    # Not yet marked offline, but silent for longer than `offline_after`: probably lost.
    silent: int
    slots_used: int
    slots_total: int
    live_capabilities: list[str]
    heartbeat_interval: float
    offline_after: float


class Overview(BaseModel):
    generated_at: datetime
    tasks_by_status: dict[TaskStatus, int]
    tasks_by_type: list[TypeCounts]
    pending_by_priority: list[PriorityCount]
    queue: QueueState
    workers: WorkerSummary


class Latency(BaseModel):
    """Seconds. queue_wait: submission to the start of the last attempt; run_time: that start
    to the end. None when no task ran. In time series these are estimates from histograms
    (within a factor of 2.5, the width of a bin); in /durations they are exact."""

    queue_wait_p50: float | None = None
    queue_wait_p95: float | None = None
    run_time_p50: float | None = None
    run_time_p95: float | None = None


class Bucket(Latency):
    start: datetime
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    throughput: float = 0.0  # completed per second over the elapsed part of the bucket
    error_rate: float | None = None  # failed / (completed + failed)


class Timeseries(BaseModel):
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: list[Bucket]
    totals: Bucket


class RunSample(BaseModel):
    task_type: str
    status: TaskStatus
    queue_wait: float
    run_time: float
    completed_at: datetime


class TypeLatency(Latency):
    task_type: str
    count: int


class Durations(BaseModel):
    since: datetime
    samples: list[RunSample]
    by_type: list[TypeLatency]


class TaskSummary(BaseModel):
    task_id: str
    task_type: str
    status: TaskStatus
    priority: int
    worker_id: str | None
    attempt: int
    max_retries: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    result_preview: str | None
    queue_wait: float | None
    run_time: float | None


class TaskPage(BaseModel):
    tasks: list[TaskSummary]
    next_cursor: str | None


# --- pure helpers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def histogram_percentile(counts: Sequence[int], q: float) -> float | None:
    """The q-th percentile (0-100) of durations counted in the LATENCY_EDGES bins, interpolated
    linearly within the bin that holds it; the open last bin answers with its lower edge."""
    total = sum(counts)
    if total == 0:
        return None
    rank, below = total * q / 100, 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            low = sql.LATENCY_EDGES[i - 1] if i > 0 else 0.0
            if i == len(sql.LATENCY_EDGES):
                return low
            high = sql.LATENCY_EDGES[i]
            return low + (high - low) * max(0.0, rank - below) / n
        below += n
    return None  # unreachable: the last non-empty bin always reaches the rank


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def latency_of(rows: Iterable[Any]) -> Latency:
    """Percentiles of rows with created_at, started_at and completed_at."""
    waits, runs = [], []
    for r in rows:
        waits.append((r.started_at - r.created_at).total_seconds())
        runs.append((r.completed_at - r.started_at).total_seconds())
    return Latency(
        queue_wait_p50=percentile(waits, 50),
        queue_wait_p95=percentile(waits, 95),
        run_time_p50=percentile(runs, 50),
        run_time_p95=percentile(runs, 95),
    )


def aligned_window(now: datetime, *, minutes: int, bucket_seconds: int) -> sql.Window:
    """Buckets on multiples of bucket_seconds since 1970, so they stay put between refreshes; the
    last one ends after `now` and is still filling."""
    step = bucket_seconds
    end = (math.floor(now.timestamp() / step) + 1) * step
    count = max(1, math.ceil(minutes * 60 / step))
    until = datetime.fromtimestamp(end, UTC)
    return sql.Window(until - timedelta(seconds=count * step), until, step)


def encode_cursor(created_at: datetime, task_id: str) -> str:
    raw = f"{created_at.isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> sql.Cursor:
    """The inverse of encode_cursor; ValueError for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, task_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor from a previous page") from exc
    if created_at.tzinfo is None:
        raise ValueError("not a cursor from a previous page")
    return sql.Cursor(created_at, task_id)


# --- overview ---------------------------------------------------------------------------------


def _counts(rows: Iterable[Any]) -> tuple[dict[TaskStatus, int], list[TypeCounts]]:
    by_status = dict.fromkeys(TaskStatus, 0)
    by_type: dict[str, TypeCounts] = {}
    for r in rows:
        status = TaskStatus(r.status)
        by_status[status] += r.n
        counts = by_type.setdefault(r.task_type, TypeCounts(task_type=r.task_type))
        setattr(counts, status.value, r.n)
    return by_status, sorted(by_type.values(), key=lambda c: c.task_type)


def summarize_workers(
    workers: Sequence[WorkerPublic], settings: Settings, now: datetime
) -> WorkerSummary:
    offline_after = settings.worker_offline_after
    live = [w for w in workers if w.status != WorkerStatus.OFFLINE]
    silent = [w for w in live if (now - w.last_heartbeat).total_seconds() > offline_after]
    return WorkerSummary(
        total=len(workers),
        live=len(live) - len(silent),
        offline=len(workers) - len(live),
        silent=len(silent),
        slots_used=sum(len(w.current_tasks) for w in live),
        slots_total=sum(w.max_concurrent_tasks for w in live),
        live_capabilities=sorted({c for w in live if w not in silent for c in w.capabilities}),
        heartbeat_interval=settings.heartbeat_interval,
        offline_after=offline_after,
    )


async def queue_state(queue: RedisQueue) -> QueueState:
    try:
        ready = await queue.queue_depths()
        delayed = await queue.redis.zcard(queue.keys.delayed)
        leased = await queue.redis.zcard(queue.keys.active)
    except (RedisError, OSError) as exc:
        # The dashboard shows Redis as down and keeps showing the database's view.
        return QueueState(available=False, error=type(exc).__name__)
    return QueueState(
        available=True, ready_by_type=dict(sorted(ready.items())), delayed=delayed, leased=leased
    )


@router.get("/overview")
async def overview(request: Request, db: DatabaseDep, settings: SettingsDep) -> Overview:
    """Counts by status and by type, pending tasks by priority, what Redis holds, and workers."""
    async with db.read() as conn:
        counts = await sql.counts_by_type_and_status(conn)
        priorities = await sql.pending_by_priority(conn)
        workers = await repo.list_workers(conn)
    now = datetime.now(UTC)
    by_status, by_type = _counts(counts)
    return Overview(
        generated_at=now,
        tasks_by_status=by_status,
        tasks_by_type=by_type,
        pending_by_priority=[
            PriorityCount(priority=r.priority, pending=r.n)
            for r in sorted(priorities, key=lambda r: -r.priority)
        ],
        queue=await queue_state(request.app.state.queue),
        workers=summarize_workers(workers, settings, now),
    )


# --- time series ------------------------------------------------------------------------------


class Histograms:
    """Per bucket, counts of queue waits and run times in the LATENCY_EDGES bins."""

    def __init__(self, buckets: int) -> None:
        bins = len(sql.LATENCY_EDGES) + 1
        self.wait = [[0] * bins for _ in range(buckets)]
        self.run = [[0] * bins for _ in range(buckets)]

    def add(self, row: Any) -> None:
        if row.wait_bin is not None:
            self.wait[row.bucket][row.wait_bin] += row.n
        if row.run_bin is not None:
            self.run[row.bucket][row.run_bin] += row.n


def _fill_latency(bucket: Bucket, wait: Sequence[int], run: Sequence[int]) -> None:
    bucket.queue_wait_p50 = histogram_percentile(wait, 50)
    bucket.queue_wait_p95 = histogram_percentile(wait, 95)
    bucket.run_time_p50 = histogram_percentile(run, 50)
    bucket.run_time_p95 = histogram_percentile(run, 95)


def _fill_rates(bucket: Bucket, elapsed: float) -> None:
    bucket.throughput = bucket.completed / elapsed if elapsed > 0 else 0.0
    ended = bucket.completed + bucket.failed
    bucket.error_rate = bucket.failed / ended if ended else None


def _column_sums(rows: Sequence[Sequence[int]]) -> list[int]:
    return [sum(column) for column in zip(*rows, strict=True)]


def build_timeseries(
    window: sql.Window, now: datetime, *, finished: Iterable[Any], submitted: Iterable[Any]
) -> Timeseries:
    """Buckets from the rows of finished_histogram and submitted_per_bucket."""
    buckets = [Bucket(start=window.bucket_start(i)) for i in range(window.buckets)]
    histograms = Histograms(len(buckets))
    for r in finished:
        if 0 <= r.bucket < len(buckets):
            counted = getattr(buckets[r.bucket], TaskStatus(r.status).value)
            setattr(buckets[r.bucket], TaskStatus(r.status).value, counted + r.n)
            histograms.add(r)
    for r in submitted:
        if 0 <= r.bucket < len(buckets):
            buckets[r.bucket].submitted = r.n
    for i, bucket in enumerate(buckets):
        _fill_rates(bucket, min(window.bucket_seconds, (now - bucket.start).total_seconds()))
        _fill_latency(bucket, histograms.wait[i], histograms.run[i])
    totals = Bucket(start=window.since)
    for name in ("submitted", "completed", "failed", "cancelled"):
        setattr(totals, name, sum(getattr(b, name) for b in buckets))
    _fill_rates(totals, (now - window.since).total_seconds())
    _fill_latency(totals, _column_sums(histograms.wait), _column_sums(histograms.run))
    return Timeseries(
        since=window.since,
        until=window.until,
        bucket_seconds=window.bucket_seconds,
        buckets=buckets,
        totals=totals,
    )


@router.get("/timeseries")
async def timeseries(
    db: DatabaseDep,
    minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 60,
    bucket_seconds: Annotated[int, Query(ge=1, le=3600)] = 60,
) -> Timeseries:
    """Per time bucket: tasks submitted, completed, failed and cancelled, throughput, error
    rate, and estimated p50/p95 of queue wait and run time. A task counts in the bucket in which
    it finished if it was submitted at most an hour before the window began."""
    if minutes * 60 / bucket_seconds > MAX_BUCKETS:
        raise field_error(
            422,
            ["query", "bucket_seconds"],
            f"at most {MAX_BUCKETS} buckets: raise bucket_seconds or lower minutes",
            "too_many_buckets",
        )
    now = datetime.now(UTC)
    window = aligned_window(now, minutes=minutes, bucket_seconds=bucket_seconds)
    async with db.read() as conn:
        finished = await sql.finished_histogram(conn, window)
        submitted = await sql.submitted_per_bucket(conn, window)
    return build_timeseries(window, now, finished=finished, submitted=submitted)


# --- durations --------------------------------------------------------------------------------


@router.get("/durations")
async def durations(
    db: DatabaseDep,
    minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 2000,
) -> Durations:
    """Queue wait and run time of the latest `limit` tasks submitted in the last `minutes` that
    ran and finished, and their percentiles per task type (for histograms of durations)."""
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    async with db.read() as conn:
        rows = await sql.recent_runs(conn, since=since, limit=limit)
    by_type: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_type[r.task_type].append(r)
    return Durations(
        since=since,
        samples=[
            RunSample(
                task_type=r.task_type,
                status=r.status,
                queue_wait=(r.started_at - r.created_at).total_seconds(),
                run_time=(r.completed_at - r.started_at).total_seconds(),
                completed_at=r.completed_at,
            )
            for r in rows
        ],
        by_type=[
            TypeLatency(task_type=name, count=len(group), **latency_of(group).model_dump())
            for name, group in sorted(by_type.items())
        ],
    )


# --- task pages -------------------------------------------------------------------------------


def _summary(row: Any) -> TaskSummary:
    return TaskSummary(
        task_id=row.task_id,
        task_type=row.task_type,
        status=row.status,
        priority=row.priority,
        worker_id=row.worker_id,
        attempt=row.attempt,
        max_retries=row.max_retries,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        error=row.error,
        result_preview=row.result_preview,
        queue_wait=seconds_between(row.created_at, row.started_at),
        run_time=seconds_between(row.started_at, row.completed_at),
    )


@router.get("/tasks")
async def task_page(
    db: DatabaseDep,
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    task_type: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    worker_id: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    priority: Annotated[int | None, Query(ge=1, le=10)] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPage:
    """Task summaries, newest first, filtered (status may repeat) and paged by keyset: pass the
    `next_cursor` of one page as `cursor` to get the next. No payload, a 200-character preview of
    the result, and no total (counting a million rows on every page is what this avoids)."""
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise field_error(422, ["query", "cursor"], str(exc), "invalid_cursor") from exc
    where = sql.PageFilter(
        statuses=status or (), task_type=task_type, worker_id=worker_id, priority=priority
    )
    async with db.read() as conn:
        rows = await sql.task_page(conn, where, after=after, limit=limit)
    page = [_summary(r) for r in rows[:limit]]
    more = len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].task_id) if more else None
    return TaskPage(tasks=page, next_cursor=next_cursor)
