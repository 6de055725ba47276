"""Task endpoints: the seed's submit, get and list, plus batches, cancellation, manual retry and
the dependency graph."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from app.api.auth import Operator, require
from app.api.deps import CorrelationId, DatabaseDep, SchedulerDep, SettingsDep
from app.api.errors import field_error, not_found
from app.api.limits import StrictJsonRoute
from app.api.responses import json_response
from app.api.stats import decode_cursor, encode_cursor
from app.database import repositories as repo
from app.database.admission import AdmissionError
from app.database.transitions import NotRetryable, UnknownTask
from app.models.auth import Scope
from app.models.task import (
    GraphEdge,
    GraphNode,
    TaskBatch,
    TaskBatchResult,
    TaskCreate,
    TaskGraph,
    TaskList,
    TaskPublic,
    TaskStatus,
)
from app.services.scheduler import AlreadyFinal

router = APIRouter(prefix="/api/tasks", tags=["tasks"], route_class=StrictJsonRoute)
SUBMIT, READ = [require(Scope.SUBMIT)], [require(Scope.READ)]
GRAPH_LIMIT = 5000


def _rejected(exc: AdmissionError, *prefix: str | int) -> HTTPException:
    return field_error(exc.status_code, ["body", *prefix, *exc.loc], str(exc), exc.kind)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    dependencies=SUBMIT,
    responses={
        200: {"description": "Identical resubmission: the existing task"},
        409: {"description": "task_id exists with a different body"},
        413: {"description": "payload over the size limit"},
    },
)
async def submit_task(
    spec: TaskCreate, scheduler: SchedulerDep, correlation_id: CorrelationId
) -> Response:
    """Accept a task. It is durable in the database before this answers."""
    try:
        task, created = await scheduler.submit(spec, correlation_id)
    except AdmissionError as exc:
        raise _rejected(exc) from exc
    return json_response(task, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@router.post("/batch", status_code=status.HTTP_201_CREATED, dependencies=SUBMIT)
async def submit_batch(
    batch: TaskBatch, scheduler: SchedulerDep, settings: SettingsDep, correlation_id: CorrelationId
) -> TaskBatchResult:
    """Accept many tasks in one transaction: all of them or none. Dependencies may point at
    tasks earlier or later in the same batch; errors name the index and the field."""
    if len(batch.tasks) > settings.max_batch_size:
        message = f"at most {settings.max_batch_size} tasks per batch"
        raise field_error(422, ["body", "tasks"], message, "too_long")
    edges = sum(len(task.dependencies) for task in batch.tasks)
    if edges > settings.max_batch_dependencies:
        message = f"{edges} dependencies in the batch; at most {settings.max_batch_dependencies}"
        raise field_error(422, ["body", "tasks"], message, "too_many_dependencies")
    try:
        admitted = await scheduler.submit_many(batch.tasks, correlation_id)
    except AdmissionError as exc:
        raise _rejected(exc, "tasks", exc.index) from exc
    return TaskBatchResult(tasks=[t for t, _ in admitted], created=sum(c for _, c in admitted))


@router.get("/{task_id}", dependencies=READ, response_model=TaskPublic)
async def get_task(task_id: str, db: DatabaseDep) -> Response:
    """A task with its attempts, dependencies and dependents."""
    async with db.read() as conn:
        task = await repo.get_task(conn, task_id)
        if task is None:
            raise not_found("task", task_id)
        task.dependents = await repo.list_dependents(conn, task_id)
    return json_response(task)


class TaskListPage(TaskList):
    """The seed's list shape, plus keyset paging and whether `total` is exact."""

    total_exact: bool
    next_cursor: str | None


@router.get("", dependencies=READ, response_model=TaskListPage)
async def list_tasks(
    db: DatabaseDep,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    task_type: str | None = None,
    worker_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> Response:
    """Newest first, by offset or by keyset: pass a page's `next_cursor` as `cursor` for the
    next one, which costs the same however deep it is. `total` counts the matching tasks exactly
    up to 10,000 past the offset; beyond that `total_exact` is false and more than `total` match
    (a full count of a million rows on every page is what this avoids)."""
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise field_error(422, ["query", "cursor"], str(exc), "invalid_cursor") from exc
    where = repo.TaskFilter(status=status_, task_type=task_type, worker_id=worker_id)
    async with db.read() as conn:
        page = await repo.list_tasks(conn, where, limit=limit, offset=offset, after=after)
    last = page.tasks[-1] if page.more else None
    answer = TaskListPage(
        tasks=page.tasks,
        total=page.total,
        limit=limit,
        offset=offset,
        total_exact=page.total_exact,
        next_cursor=None if last is None else encode_cursor(last.created_at, last.task_id),
    )
    return json_response(answer)


@router.post("/{task_id}/cancel", responses={409: {"description": "the task already finished"}})
async def cancel_task(task_id: str, scheduler: SchedulerDep, operator: Operator) -> TaskPublic:
    """Cancel a pending task at once, or tell a running one to stop; dependents are cancelled."""
    try:
        return await scheduler.cancel(task_id, key_id=operator.key_id)
    except UnknownTask as exc:
        raise not_found("task", task_id) from exc
    except AlreadyFinal as exc:
        raise field_error(409, ["path", "task_id"], str(exc), "already_final") from exc


@router.post("/{task_id}/retry", responses={409: {"description": "not failed or cancelled"}})
async def retry_task(task_id: str, scheduler: SchedulerDep, operator: Operator) -> TaskPublic:
    """Run a failed or cancelled task again, with a fresh allowance of retries."""
    try:
        return await scheduler.retry(task_id, key_id=operator.key_id)
    except UnknownTask as exc:
        raise not_found("task", task_id) from exc
    except NotRetryable as exc:
        raise field_error(409, ["path", "task_id"], str(exc), "not_retryable") from exc


@router.get("/{task_id}/graph", dependencies=READ)
async def task_graph(task_id: str, db: DatabaseDep) -> TaskGraph:
    """The dependency graph around a task (all ancestors and descendants) for drawing."""
    async with db.read() as conn:
        nodes, edges = await repo.task_graph(conn, task_id, limit=GRAPH_LIMIT)
    if not nodes:
        raise not_found("task", task_id)
    return TaskGraph(
        nodes=[GraphNode.model_validate(n, from_attributes=True) for n in nodes],
        edges=[GraphEdge(from_=e.depends_on, to=e.task_id) for e in edges],
        truncated=len(nodes) >= GRAPH_LIMIT,
    )
