"""Admission: the one way tasks come into existence (nothing -> pending, or straight to failed
or cancelled when a dependency already is). A batch is admitted in one transaction: all of it
or none of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.database.tables import dependencies, tasks
from app.models.task import ReadyTask, TaskStatus

BROKEN = {TaskStatus.FAILED: "failed", TaskStatus.CANCELLED: "was cancelled"}


class AdmissionError(Exception):
    """A submission that cannot be admitted; `index` is its position in the batch and `loc` the
    offending field within it, so the API can name both."""

    status_code = 422
    kind = "invalid"

    def __init__(self, index: int, loc: list[str | int], message: str) -> None:
        super().__init__(message)
        self.index, self.loc = index, loc


class UnknownDependency(AdmissionError):
    kind = "unknown_dependency"

    def __init__(self, index: int, position: int, dependency: str) -> None:
        super().__init__(index, ["dependencies", position], f"unknown task '{dependency}'")


class DuplicateTask(AdmissionError):
    status_code = 409
    kind = "conflict"

    def __init__(self, index: int, task_id: str, why: str = "with a different body") -> None:
        super().__init__(index, ["task_id"], f"task '{task_id}' already exists {why}")


class DependencyCycle(AdmissionError):
    kind = "dependency_cycle"

    def __init__(self, index: int, members: Sequence[str]) -> None:
        super().__init__(index, ["dependencies"], f"dependency cycle among {sorted(members)}")


@dataclass
class NewTask:
    """A validated submission with every default resolved."""

    task_id: str
    task_type: str
    payload: dict[str, Any]
    priority: int
    timeout: int
    max_retries: int
    fingerprint: str
    correlation_id: str | None = None
    scheduled_at: datetime | None = None
    dependencies: list[str] = field(default_factory=list)
    # A fresh uuid4 made by the API: no stored task can have it, so admission need not look.
    id_generated: bool = False
    # When the API received it (a submission may wait for its group's transaction).
    received_at: datetime | None = None


@dataclass
class Admitted:
    task_id: str
    created: bool
    ready: ReadyTask | None
    # The stored row of a new task, so the caller can answer without reading it back.
    row: dict[str, Any] | None = None


async def admit(
    conn: AsyncConnection, batch: Sequence[NewTask], *, now: datetime
) -> list[Admitted]:
    """Insert new tasks with their dependency edges; an identical resubmission is recognised and
    left as it is (idempotent), a different body under an existing id is a conflict."""
    fresh = await _fresh(conn, batch)
    ordered = _in_dependency_order(batch, fresh)
    batch_ids = {batch[i].task_id for i in fresh}
    outside = sorted({d for i in fresh for d in batch[i].dependencies if d not in batch_ids})
    statuses = await _lock_dependencies(conn, outside)
    _check_known(batch, fresh, batch_ids, statuses)
    parents = {d for i in fresh for d in batch[i].dependencies if d in batch_ids}
    rows: dict[int, dict[str, Any]] = {}
    ready = {}
    for i in ordered:
        new = batch[i]
        status, error, remaining = _initial_state(new, statuses)
        statuses[new.task_id] = status
        rows[i] = _row(new, status, error, remaining, new.task_id in parents, now)
        if status == TaskStatus.PENDING and remaining == 0:
            ready[i] = ReadyTask(new.task_id, new.task_type, new.priority, new.scheduled_at)
    if rows:
        await conn.execute(insert(tasks), list(rows.values()))
    edges = [
        {"task_id": batch[i].task_id, "depends_on": d} for i in fresh for d in batch[i].dependencies
    ]
    if edges:
        await conn.execute(insert(dependencies), edges)
    return [
        Admitted(new.task_id, created=i in rows, ready=ready.get(i), row=rows.get(i))
        for i, new in enumerate(batch)
    ]


async def _fresh(conn: AsyncConnection, batch: Sequence[NewTask]) -> list[int]:
    """Indexes of the submissions not yet stored (one query for the whole batch)."""
    seen: dict[str, int] = {}
    for index, new in enumerate(batch):
        if new.task_id in seen:
            raise DuplicateTask(
                index, new.task_id, f"earlier in this batch (index {seen[new.task_id]})"
            )
        seen[new.task_id] = index
    given = [new.task_id for new in batch if not new.id_generated]
    stored: dict[str, str] = {}
    if given:
        rows = await conn.execute(
            select(tasks.c.task_id, tasks.c.fingerprint).where(tasks.c.task_id.in_(given))
        )
        stored = {r.task_id: r.fingerprint for r in rows}
    for task_id, fingerprint in stored.items():
        if batch[seen[task_id]].fingerprint != fingerprint:
            raise DuplicateTask(seen[task_id], task_id)
    return [i for i, new in enumerate(batch) if new.task_id not in stored]


def _in_dependency_order(batch: Sequence[NewTask], fresh: Sequence[int]) -> list[int]:
    """Order new tasks so each comes after the new tasks it depends on (Kahn's algorithm); what
    cannot be ordered lies on a cycle."""
    index_of = {batch[i].task_id: i for i in fresh}
    waiting = {i: {d for d in batch[i].dependencies if d in index_of} for i in fresh}
    ordered: list[int] = []
    ready = [i for i in fresh if not waiting[i]]
    while ready:
        current = ready.pop()
        ordered.append(current)
        done = batch[current].task_id
        for i, deps in waiting.items():
            if done in deps:
                deps.discard(done)
                if not deps:
                    ready.append(i)
    if len(ordered) < len(fresh):
        stuck = [i for i in fresh if waiting[i]]
        raise DependencyCycle(min(stuck), [batch[i].task_id for i in stuck])
    return ordered


async def _lock_dependencies(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, TaskStatus]:
    """Mark stored dependencies as having dependents and read their status in one statement.
    The row locks it takes mean a dependency completing at the same moment either sees the new
    edge or is seen here as completed, never neither (which would strand the new task)."""
    if not ids:
        return {}
    rows = await conn.execute(
        update(tasks)
        .where(tasks.c.task_id.in_(ids))
        .values(has_dependents=True)
        .returning(tasks.c.task_id, tasks.c.status)
    )
    return {r.task_id: TaskStatus(r.status) for r in rows}


def _check_known(
    batch: Sequence[NewTask],
    fresh: Sequence[int],
    batch_ids: set[str],
    stored: dict[str, TaskStatus],
) -> None:
    for i in fresh:
        for position, dep in enumerate(batch[i].dependencies):
            if dep not in batch_ids and dep not in stored:
                raise UnknownDependency(i, position, dep)


def _initial_state(
    new: NewTask, statuses: dict[str, TaskStatus]
) -> tuple[TaskStatus, str | None, int]:
    for dep in new.dependencies:
        if statuses[dep] in BROKEN:
            return statuses[dep], f"dependency '{dep}' {BROKEN[statuses[dep]]}", 0
    return (
        TaskStatus.PENDING,
        None,
        sum(1 for d in new.dependencies if statuses[d] != TaskStatus.COMPLETED),
    )


def _row(
    new: NewTask,
    status: TaskStatus,
    error: str | None,
    remaining: int,
    has_dependents: bool,
    now: datetime,
) -> dict[str, Any]:
    return {
        "task_id": new.task_id,
        "task_type": new.task_type,
        "status": status,
        "priority": new.priority,
        "payload": new.payload,
        "result": None,
        "error": error,
        "attempt": 0,
        "attempt_base": 0,
        "max_retries": new.max_retries,
        "timeout": new.timeout,
        "worker_id": None,
        "correlation_id": new.correlation_id,
        "fingerprint": new.fingerprint,
        "remaining_dependencies": remaining,
        "has_dependents": has_dependents,
        "created_at": new.received_at or now,
        "updated_at": now,
        "scheduled_at": new.scheduled_at,
        "started_at": None,
        "completed_at": None if status == TaskStatus.PENDING else now,
        "lease_expires_at": None,
    }
