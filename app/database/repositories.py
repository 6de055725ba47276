"""Data access with domain verbs: reading tasks, reconciliation cursors, the worker registry.
New tasks come in through admission.py; status changes live in transitions.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app.database.tables import attempts, dependencies, tasks, workers
from app.models.task import AttemptPublic, TaskPublic, TaskStatus
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
    return task


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


async def list_dependents(conn: AsyncConnection, task_id: str) -> list[str]:
    rows = await conn.execute(
        select(dependencies.c.task_id).where(dependencies.c.depends_on == task_id)
    )
    return list(rows.scalars())


@dataclass
class TaskFilter:
    status: TaskStatus | None = None
    task_type: str | None = None
    worker_id: str | None = None

    def apply(self, query: Any) -> Any:
        if self.status is not None:
            query = query.where(tasks.c.status == self.status)
        if self.task_type is not None:
            query = query.where(tasks.c.task_type == self.task_type)
        if self.worker_id is not None:
            query = query.where(tasks.c.worker_id == self.worker_id)
        return query


async def list_tasks(
    conn: AsyncConnection, where: TaskFilter, *, limit: int, offset: int
) -> tuple[list[TaskPublic], int]:
    total: int = (
        await conn.execute(where.apply(select(func.count()).select_from(tasks)))
    ).scalar_one()
    page = await conn.execute(
        where.apply(select(tasks))
        .order_by(tasks.c.created_at.desc(), tasks.c.task_id)
        .limit(limit)
        .offset(offset)
    )
    return [to_public(r, None) for r in page], int(total)


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
        ).where(tasks.c.task_id.in_(task_ids))
    )
    return {r.task_id: r for r in rows}


async def pending_ready_after(conn: AsyncConnection, after: str, *, limit: int) -> list[Row[Any]]:
    """A page of pending tasks with no open dependency, in task-id order (a reconcile cursor)."""
    rows = await conn.execute(
        select(
            tasks.c.task_id,
            tasks.c.task_type,
            tasks.c.priority,
            tasks.c.scheduled_at,
            tasks.c.updated_at,
        )
        .where(
            tasks.c.status == TaskStatus.PENDING,
            tasks.c.remaining_dependencies == 0,
            tasks.c.task_id > after,
        )
        .order_by(tasks.c.task_id)
        .limit(limit)
    )
    return list(rows)


async def running_past_lease(conn: AsyncConnection, now: datetime, *, limit: int) -> list[Row[Any]]:
    """Running tasks whose database lease ran out: the backstop for a Redis lease gone missing."""
    rows = await conn.execute(
        select(tasks.c.task_id, tasks.c.task_type, tasks.c.worker_id)
        .where(tasks.c.status == TaskStatus.RUNNING, tasks.c.lease_expires_at < now)
        .limit(limit)
    )
    return list(rows)


async def running_after(conn: AsyncConnection, after: str, *, limit: int) -> list[Row[Any]]:
    rows = await conn.execute(
        select(tasks.c.task_id, tasks.c.worker_id)
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
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(workers).values(**values)
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
