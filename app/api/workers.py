"""Worker endpoints of the seed (register, heartbeat, list) and the worker protocol
(confirm claims, report outcomes, deregister)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import SchedulerDep, SettingsDep, WorkersDep
from app.api.errors import not_found
from app.api.responses import json_response
from app.models.worker import (
    ExchangeRequest,
    ExchangeResponse,
    RegisterResponse,
    ReportBatch,
    ReportResponse,
    StartRequest,
    StartResponse,
    WorkerHeartbeat,
    WorkerList,
    WorkerPublic,
    WorkerRegister,
)

router = APIRouter(prefix="/api/workers", tags=["workers"])


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register_worker(
    spec: WorkerRegister, workers: WorkersDep, settings: SettingsDep
) -> RegisterResponse:
    """Register (or re-register) a worker. The answer tells it where the queue is."""
    worker = await workers.register(spec)
    return RegisterResponse(
        worker=worker,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        lease_seconds=settings.lease_seconds,
        lease_renew_interval=settings.lease_renew_every,
        heartbeat_interval=settings.heartbeat_interval,
        retry_backoff_base=settings.retry_backoff_base,
        retry_backoff_max=settings.retry_backoff_max,
    )


@router.post("/{worker_id}/heartbeat")
async def heartbeat(worker_id: str, beat: WorkerHeartbeat, workers: WorkersDep) -> WorkerPublic:
    worker = await workers.heartbeat(worker_id, beat)
    if worker is None:
        raise not_found("worker", worker_id)
    return worker


@router.get("")
async def list_workers(workers: WorkersDep) -> WorkerList:
    found = await workers.list_all()
    return WorkerList(workers=found, total=len(found))


@router.post("/{worker_id}/start")
async def start_tasks(
    worker_id: str, claim: StartRequest, scheduler: SchedulerDep
) -> StartResponse:
    """Turn the worker's Redis claims into numbered attempts; refused ids must be dropped."""
    return await scheduler.start_claimed(worker_id, claim.task_ids)


@router.post("/{worker_id}/reports")
async def report_outcomes(
    worker_id: str, batch: ReportBatch, scheduler: SchedulerDep
) -> ReportResponse:
    """Record how attempts ended. Reports of superseded attempts come back in `refused`."""
    return await scheduler.report(worker_id, batch.reports)


@router.post("/{worker_id}/exchange", response_model=ExchangeResponse)
async def exchange(worker_id: str, request: ExchangeRequest, scheduler: SchedulerDep) -> Response:
    """The worker protocol in one round trip: record `reports` and start `claims` in one
    transaction. A worker sends this whenever it has claimed tasks or finished attempts."""
    return json_response(await scheduler.exchange(worker_id, request.reports, request.claims))


@router.post("/{worker_id}/deregister", status_code=status.HTTP_204_NO_CONTENT)
async def deregister(worker_id: str, workers: WorkersDep) -> None:
    if not await workers.deregister(worker_id):
        raise not_found("worker", worker_id)
