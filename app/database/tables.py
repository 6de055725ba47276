"""SQLAlchemy table definitions. The database is the source of truth for tasks and workers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


JSONDoc = JSON().with_variant(JSONB(), "postgresql")

# Pending and ready to run: the rows of the reconciliation index. Queries repeat it as literal
# SQL, because a partial index serves only queries whose WHERE implies its predicate, and a bound
# parameter ('status = $1') does not imply it for the planner.
READY_PREDICATE = "status = 'pending' AND remaining_dependencies = 0"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TaskRow(Base):
    __tablename__ = "tasks"

    task_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    task_type: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    result: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    # Number of the current (or last) attempt; 0 until the first start. Fences stale reports.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts made before the last manual retry; retries count from here (attempt - base).
    attempt_base: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    timeout: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(100))
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    # Dependencies not yet completed; the task is ready when this is 0.
    remaining_dependencies: Mapped[int] = mapped_column(Integer, default=0)
    # Lets completion skip the dependents query for the common task nobody depends on.
    has_dependents: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Every index costs an insert on each status change that is not a HOT update (status is
    # indexed, so most are not), hence few, narrow ones. Partial indexes skip the rows whose new
    # version falls outside their predicate: pending rows never enter the worker or completed_at
    # index, and only pending ready rows enter the reconciliation index. On PostgreSQL, migration
    # 0002 also adds extended statistics on (task_type, status) and (worker_id, status).
    __table_args__ = (
        # Status pages newest first (GET /api/tasks?status=...), counts and windows per status.
        Index(None, "status", "created_at"),
        # Pages of one type, newest first: one index range per status, merged (see
        # repositories._newest_first); the prefix also gives the per-type counts index-only.
        Index(None, "task_type", "status", "created_at"),
        # The same for one worker. Pending rows have no worker, so they stay out of it.
        Index(
            None,
            "worker_id",
            "status",
            "created_at",
            postgresql_where=text("worker_id IS NOT NULL"),
            sqlite_where=text("worker_id IS NOT NULL"),
        ),
        # Unfiltered pages newest first, and submissions per time bucket.
        Index(None, "created_at"),
        # Tasks that finished in a time window (the dashboard's time series): only finished rows
        # have completed_at, so each task enters it once, when it ends.
        Index(
            "ix_tasks_finished_completed_at",
            "completed_at",
            postgresql_where=text("completed_at IS NOT NULL"),
            sqlite_where=text("completed_at IS NOT NULL"),
        ),
        # Reconciliation: pending tasks with no open dependency in the order they last changed,
        # so recently changed ones are checked first and the full sweep pages by keyset. The
        # predicate is written out literally in the queries that use it (READY_PREDICATE).
        Index(
            "ix_tasks_ready_updated_at",
            "updated_at",
            "task_id",
            postgresql_where=text(READY_PREDICATE),
            sqlite_where=text(READY_PREDICATE),
        ),
    )


class DependencyRow(Base):
    __tablename__ = "task_dependencies"

    task_id: Mapped[str] = mapped_column(
        String(100), ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True
    )
    depends_on: Mapped[str] = mapped_column(
        String(100), ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index(None, "depends_on"),)


class AttemptRow(Base):
    __tablename__ = "task_attempts"

    task_id: Mapped[str] = mapped_column(
        String(100), ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str | None] = mapped_column(String(100))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class WorkerRow(Base):
    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    capabilities: Mapped[list[str]] = mapped_column(JSONDoc)
    max_concurrent_tasks: Mapped[int] = mapped_column(Integer)
    current_tasks: Mapped[list[str]] = mapped_column(JSONDoc)
    system_info: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    hostname: Mapped[str | None] = mapped_column(String(255))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime)


tasks = cast(Table, TaskRow.__table__)
dependencies = cast(Table, DependencyRow.__table__)
attempts = cast(Table, AttemptRow.__table__)
workers = cast(Table, WorkerRow.__table__)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of its secret is kept (docs/security.md)."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONDoc)
    # A worker id, or a prefix ending in '*', the key may act as (NULL: any).
    worker_id: Mapped[str | None] = mapped_column(String(101))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Written at most once a minute per key and API process, not per request.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Every authenticated request that misses the cache looks its key up by hash.
    __table_args__ = (Index(None, "key_hash", unique=True),)


class TaskEventRow(Base):
    """Audit trail of operator actions: on a task (cancel, retry) or on keys (task_id NULL)."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str | None] = mapped_column(
        String(100), ForeignKey("tasks.task_id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(32))
    # The key that acted; NULL for a request without a key (open mode).
    key_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)

    # A task's events in order (GET /api/tasks/{id}).
    __table_args__ = (Index(None, "task_id", "id"),)


api_keys = cast(Table, ApiKeyRow.__table__)
task_events = cast(Table, TaskEventRow.__table__)


class TaskLogRow(Base):
    """A line a handler wrote during an attempt (print, stderr or logging), docs/architecture.md
    "Per-task logs". `seq` is attempt × 10⁹ + the line's number within the attempt, given by the
    worker: one task's lines read in order by the primary key, and a batch sent twice (a lost
    answer) is stored once."""

    __tablename__ = "task_logs"

    task_id: Mapped[str] = mapped_column(
        String(100), ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[str] = mapped_column(String(16))
    stream: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)


task_logs = cast(Table, TaskLogRow.__table__)


class ScheduleRow(Base):
    """A periodic schedule (docs/schedules.md): cron or interval, and the task each fire makes."""

    __tablename__ = "schedules"

    schedule_id: Mapped[str] = mapped_column(String(55), primary_key=True)
    cron: Mapped[str | None] = mapped_column(String(200))
    interval_seconds: Mapped[int | None] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64))
    # The ScheduleTask of app/models/schedule.py: task_type, payload, priority, timeout, retries.
    task: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    enabled: Mapped[bool] = mapped_column(Boolean)
    catch_up: Mapped[str] = mapped_column(String(8))
    start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_concurrent_runs: Mapped[int | None] = mapped_column(Integer)
    # The earliest fire time not yet handled; NULL while paused or past end_at. Firing advances
    # it in the transaction that records the fire, guarded by its old value.
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # The leader's tick looks for schedules that are due.
    __table_args__ = (Index(None, "next_fire_at"),)


class ScheduleFireRow(Base):
    """One handled fire time of a schedule. The primary key makes a fire time unique; task_id is
    not a foreign key, so deleting old tasks never blocks on (nor loses) the schedule's history."""

    __tablename__ = "schedule_fires"

    schedule_id: Mapped[str] = mapped_column(
        String(55), ForeignKey("schedules.schedule_id", ondelete="CASCADE"), primary_key=True
    )
    fire_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    # NULL when skipped (max_concurrent_runs reached).
    task_id: Mapped[str | None] = mapped_column(String(100))
    skipped: Mapped[bool] = mapped_column(Boolean)


schedules = cast(Table, ScheduleRow.__table__)
schedule_fires = cast(Table, ScheduleFireRow.__table__)


def upsert_into(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of `dialect` ("postgresql" or "sqlite"), the two with ON CONFLICT clauses."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
