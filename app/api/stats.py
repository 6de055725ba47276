"""Read-only aggregates for the dashboard: cheap to poll every few seconds with a million tasks.

The SQL lives in app.database.stats; this module turns rows into the response shapes and computes
percentiles over the bounded samples those queries return."""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel
from redis.exceptions import RedisError

from app.api.auth import require
from app.api.deps import DatabaseDep, SettingsDep
from app.api.errors import field_error
from app.config import Settings
from app.database import repositories as repo
from app.database import stats as sql
from app.database.connection import Database
from app.models.auth import Scope
from app.models.task import NAME_PATTERN, TaskStatus
from app.models.worker import WorkerPublic, WorkerStatus
from app.services.message_queue import RedisQueue

router = APIRouter(prefix="/api/stats", tags=["stats"], dependencies=[require(Scope.READ)])
log = structlog.get_logger(__name__)

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
    # When the task counts were computed: now on a store of modest size, up to a few seconds
    # earlier on a large one (see Snapshots).
    counts_as_of: datetime
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
    generated_at: datetime
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


def decode_cursor(token: str) -> repo.Cursor:
    """The inverse of encode_cursor; ValueError for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, task_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor from a previous page") from exc
    if created_at.tzinfo is None:
        raise ValueError("not a cursor from a previous page")
    return repo.Cursor(created_at, task_id)


# --- snapshots of large aggregates -------------------------------------------------------------

# An aggregate over fewer rows than this is computed on every request: exact and fresh.
SNAPSHOT_ROWS = 20_000
# A larger one is answered from its last result and recomputed in the background once that is
# older than REFRESH_SECONDS; before answering once it is older than STALE_SECONDS (the
# background refresh kept failing).
REFRESH_SECONDS = 5.0
STALE_SECONDS = 60.0
MAX_SNAPSHOTS = 64

# Computes an aggregate: its value and the number of rows it read.
Compute = Callable[[], Awaitable[tuple[Any, int]]]


@dataclass(frozen=True)
class Snapshot:
    value: Any
    rows: int  # rows the aggregate read: what decides whether it is kept
    taken: float  # event-loop clock
    taken_at: datetime


class Snapshots:
    """Results of the dashboard's large aggregates, per key (endpoint and parameters).

    Counting a million tasks takes 100-300 ms on two busy cores whatever the index, and each
    open dashboard asks every few seconds. Past SNAPSHOT_ROWS an answer is therefore at most
    REFRESH_SECONDS (plus one computation) old, and the aggregate runs once per REFRESH_SECONDS
    however many clients poll. The alternative, counters kept by every status change, would put
    one contended row on the hot write path."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, Snapshot] = {}
        self._refreshing: dict[Hashable, asyncio.Task[None]] = {}

    async def get(self, key: Hashable, compute: Compute) -> Snapshot:
        entry = self._entries.get(key)
        now = asyncio.get_running_loop().time()
        if entry is None or entry.rows < SNAPSHOT_ROWS or now - entry.taken > STALE_SECONDS:
            return await self._take(key, compute)
        if now - entry.taken > REFRESH_SECONDS and key not in self._refreshing:
            self._refreshing[key] = asyncio.create_task(self._refresh(key, compute))
        return entry

    async def _take(self, key: Hashable, compute: Compute) -> Snapshot:
        value, rows = await compute()
        entry = Snapshot(value, rows, asyncio.get_running_loop().time(), datetime.now(UTC))
        self._entries.pop(key, None)  # re-inserted last: the oldest key is evicted first
        self._entries[key] = entry
        while len(self._entries) > MAX_SNAPSHOTS:
            del self._entries[next(iter(self._entries))]
        return entry

    async def settled(self) -> None:
        """Wait for the refreshes under way (tests, and a clean shutdown)."""
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)

    async def _refresh(self, key: Hashable, compute: Compute) -> None:
        try:
            await self._take(key, compute)
        except Exception:  # the last answer stays; the next request past REFRESH_SECONDS retries
            log.warning("stats.snapshot_failed", key=str(key), exc_info=True)
        finally:
            self._refreshing.pop(key, None)


def snapshots_of(app: FastAPI) -> Snapshots:
    """The app's snapshots, made on first use (they live as long as the app)."""
    found: Snapshots | None = getattr(app.state, "stats_snapshots", None)
    if found is None:
        found = app.state.stats_snapshots = Snapshots()
    return found


def snapshots(request: Request) -> Snapshots:
    return snapshots_of(request.app)


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


@dataclass(frozen=True)
class TaskCounts:
    by_status: dict[TaskStatus, int]
    by_type: list[TypeCounts]
    pending_by_priority: list[PriorityCount]


async def task_counts(db: Database) -> tuple[TaskCounts, int]:
    """The overview's counts, and how many tasks they cover (its cost: every task is read)."""
    async with db.read() as conn:
        counts = await sql.counts_by_type_and_status(conn)
        priorities = await sql.pending_by_priority(conn)
    by_status, by_type = _counts(counts)
    by_priority = [
        PriorityCount(priority=r.priority, pending=r.n)
        for r in sorted(priorities, key=lambda r: -r.priority)
    ]
    return TaskCounts(by_status, by_type, by_priority), sum(by_status.values())


@router.get("/overview")
async def overview(request: Request, db: DatabaseDep, settings: SettingsDep) -> Overview:
    """Counts by status and by type, pending tasks by priority, what Redis holds, and workers.
    The counts come from a snapshot at most a few seconds old once they cover over
    SNAPSHOT_ROWS tasks; workers and Redis are read on every request."""
    counted = await snapshots(request).get("overview", lambda: task_counts(db))
    counts: TaskCounts = counted.value
    async with db.read() as conn:
        workers = await repo.list_workers(conn)
    now = datetime.now(UTC)
    return Overview(
        generated_at=now,
        counts_as_of=counted.taken_at,
        tasks_by_status=counts.by_status,
        tasks_by_type=counts.by_type,
        pending_by_priority=counts.pending_by_priority,
        queue=await queue_state(request.app.state.queue),
        workers=summarize_workers(workers, settings, now),
    )


# --- time series ------------------------------------------------------------------------------


FINAL = ("completed", "failed", "cancelled")


class Tally:
    """One bucket's counts and histograms (of queue wait and run time, in the LATENCY_EDGES
    bins) as plain lists: updating pydantic models row by row cost 18 µs a row, most of a day
    of one-minute buckets."""

    __slots__ = ("counts", "run", "wait")

    def __init__(self) -> None:
        bins = len(sql.LATENCY_EDGES) + 1
        self.counts = dict.fromkeys(("submitted", *FINAL), 0)
        self.wait = [0] * bins
        self.run = [0] * bins

    def add_finished(self, status: str, wait_bin: int | None, run_bin: int | None, n: int) -> None:
        if status in FINAL:
            self.counts[status] += n
        if wait_bin is not None:
            self.wait[wait_bin] += n
        if run_bin is not None:
            self.run[run_bin] += n

    def add(self, other: Tally) -> None:
        for name, n in other.counts.items():
            self.counts[name] += n
        self.wait = [a + b for a, b in zip(self.wait, other.wait, strict=True)]
        self.run = [a + b for a, b in zip(self.run, other.run, strict=True)]

    def bucket(self, start: datetime, elapsed: float) -> Bucket:
        completed, failed = self.counts["completed"], self.counts["failed"]
        return Bucket(
            start=start,
            **self.counts,
            throughput=completed / elapsed if elapsed > 0 else 0.0,
            error_rate=failed / (completed + failed) if completed + failed else None,
            queue_wait_p50=histogram_percentile(self.wait, 50),
            queue_wait_p95=histogram_percentile(self.wait, 95),
            run_time_p50=histogram_percentile(self.run, 50),
            run_time_p95=histogram_percentile(self.run, 95),
        )


def build_timeseries(
    window: sql.Window, now: datetime, *, finished: Iterable[Any], submitted: Iterable[Any]
) -> Timeseries:
    """Buckets from the rows of finished_histogram and submitted_per_bucket."""
    tallies = [Tally() for _ in range(window.buckets)]
    # Unpacked rows: a day of one-minute buckets is some 50,000 of them.
    for index, status, wait_bin, run_bin, n in finished:
        if 0 <= index < len(tallies):
            tallies[index].add_finished(status, wait_bin, run_bin, n)
    for index, n in submitted:
        if 0 <= index < len(tallies):
            tallies[index].counts["submitted"] = n
    totals = Tally()
    buckets = []
    for i, tally in enumerate(tallies):
        start = window.bucket_start(i)
        elapsed = min(window.bucket_seconds, (now - start).total_seconds())
        buckets.append(tally.bucket(start, elapsed))
        totals.add(tally)
    return Timeseries(
        generated_at=now,
        since=window.since,
        until=window.until,
        bucket_seconds=window.bucket_seconds,
        buckets=buckets,
        totals=totals.bucket(window.since, (now - window.since).total_seconds()),
    )


async def compute_timeseries(
    db: Database, *, minutes: int, bucket_seconds: int
) -> tuple[Timeseries, int]:
    """The time series ending now, and how many rows it aggregated."""
    now = datetime.now(UTC)
    window = aligned_window(now, minutes=minutes, bucket_seconds=bucket_seconds)
    async with db.read() as conn:
        finished = await sql.finished_histogram(conn, window)
        submitted = await sql.submitted_per_bucket(conn, window)
    rows = sum(r.n for r in finished) + sum(r.n for r in submitted)
    return build_timeseries(window, now, finished=finished, submitted=submitted), rows


@router.get("/timeseries")
async def timeseries(
    request: Request,
    db: DatabaseDep,
    minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 60,
    bucket_seconds: Annotated[int, Query(ge=1, le=3600)] = 60,
) -> Timeseries:
    """Per time bucket: tasks submitted, completed, failed and cancelled, throughput, error
    rate, and estimated p50/p95 of queue wait and run time. A task counts in the bucket in which
    it finished, however long before the window it was submitted. A window of over
    SNAPSHOT_ROWS tasks is answered from a snapshot at most a few seconds old
    (`generated_at`)."""
    if minutes * 60 / bucket_seconds > MAX_BUCKETS:
        raise field_error(
            422,
            ["query", "bucket_seconds"],
            f"at most {MAX_BUCKETS} buckets: raise bucket_seconds or lower minutes",
            "too_many_buckets",
        )
    key = ("timeseries", minutes, bucket_seconds)
    series = await snapshots(request).get(
        key, lambda: compute_timeseries(db, minutes=minutes, bucket_seconds=bucket_seconds)
    )
    answer: Timeseries = series.value
    return answer


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
