"""Task endpoints of the seed: submit, get, list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import CorrelationId, DatabaseDep, SchedulerDep
from app.api.errors import field_error, not_found
from app.database import repositories as repo
from app.models.task import TaskCreate, TaskList, TaskPublic, TaskStatus
from app.services.scheduler import PayloadTooLarge

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "Identical resubmission: the existing task"},
        409: {"description": "task_id exists with a different body"},
        413: {"description": "payload over the size limit"},
    },
)
async def submit_task(
    spec: TaskCreate, response: Response, scheduler: SchedulerDep, correlation_id: CorrelationId
) -> TaskPublic:
    """Accept a task. It is durable in the database before this answers."""
    if spec.task_id is not None and spec.task_id in spec.dependencies:
        raise field_error(
            422, ["body", "dependencies"], "a task cannot depend on itself", "self_dependency"
        )
    try:
        task, created = await scheduler.submit(spec, correlation_id)
    except PayloadTooLarge as exc:
        raise field_error(413, ["body", "payload"], str(exc), "payload_too_large") from exc
    except repo.UnknownDependency as exc:
        raise field_error(
            422, ["body", "dependencies", exc.index], str(exc), "unknown_dependency"
        ) from exc
    except repo.DuplicateTask as exc:
        raise field_error(409, ["body", "task_id"], str(exc), "conflict") from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return task


@router.get("/{task_id}")
async def get_task(task_id: str, db: DatabaseDep) -> TaskPublic:
    """A task with its attempts, dependencies and dependents."""
    async with db.transaction() as conn:
        task = await repo.get_task(conn, task_id)
        if task is None:
            raise not_found("task", task_id)
        task.dependents = await repo.list_dependents(conn, task_id)
    return task


@router.get("")
async def list_tasks(
    db: DatabaseDep,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    task_type: str | None = None,
    worker_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> TaskList:
    """Newest first. `total` counts every task matching the filters."""
    where = repo.TaskFilter(status=status_, task_type=task_type, worker_id=worker_id)
    async with db.transaction() as conn:
        tasks, total = await repo.list_tasks(conn, where, limit=limit, offset=offset)
    return TaskList(tasks=tasks, total=total, limit=limit, offset=offset)
