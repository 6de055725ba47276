"""Ready queues by task type, and whether any live worker can drain them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.auth import require
from app.api.deps import WorkersDep
from app.models.auth import Scope
from app.models.task import QueueInfo
from app.models.worker import WorkerStatus

router = APIRouter(prefix="/api/queues", tags=["queues"], dependencies=[require(Scope.READ)])


@router.get("")
async def list_queues(request: Request, workers: WorkersDep) -> list[QueueInfo]:
    """One entry per task type that has ready tasks or a live worker. `routable` is false when
    tasks of a type wait and no live worker has that capability: they will wait until one comes."""
    depths = await request.app.state.queue.queue_depths()
    live: dict[str, int] = {}
    for worker in await workers.list_all():
        if worker.status != WorkerStatus.OFFLINE:
            for capability in worker.capabilities:
                live[capability] = live.get(capability, 0) + 1
    types = sorted(set(depths) | set(live))
    return [
        QueueInfo(
            task_type=t,
            ready=depths.get(t, 0),
            live_workers=live.get(t, 0),
            routable=live.get(t, 0) > 0,
        )
        for t in types
    ]
