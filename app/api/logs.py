"""Per-task logs: what a task's handlers printed and logged, attempt by attempt."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.auth import require
from app.api.deps import DatabaseDep
from app.api.errors import not_found
from app.api.limits import StrictJsonRoute
from app.database import task_logs
from app.models.auth import Scope
from app.models.logs import LOGS_PAGE_DEFAULT, LOGS_PAGE_MAX, TaskLogs
from app.models.task import MAX_ATTEMPT

router = APIRouter(prefix="/api/tasks", tags=["tasks"], route_class=StrictJsonRoute)
READ = [require(Scope.READ)]
MAX_SEQ = 2**63 - 1


@router.get("/{task_id}/logs", dependencies=READ)
async def task_logs_page(
    task_id: str,
    db: DatabaseDep,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    limit: Annotated[int, Query(ge=1, le=LOGS_PAGE_MAX)] = LOGS_PAGE_DEFAULT,
) -> TaskLogs:
    """The task's log lines in order of `seq`, of one `attempt` or all. To follow a running
    task, pass the `next_after` of each answer as `after` of the next request."""
    async with db.read() as conn:
        lines = await task_logs.read(conn, task_id, attempt=attempt, after=after, limit=limit)
        if not lines and not await task_logs.task_exists(conn, task_id):
            raise not_found("task", task_id)
    next_after = lines[-1].seq if lines else after
    return TaskLogs(task_id=task_id, lines=lines, next_after=next_after)
