"""Worker endpoints of the seed (register, heartbeat, list) and the worker protocol
(confirm claims, report outcomes, deregister)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.auth import WorkerCaller, ensure_may_act_as, require
from app.api.deps import SchedulerDep, SettingsDep, WorkersDep
from app.api.errors import not_found
from app.api.limits import StrictJsonRoute
from app.api.responses import json_response
from app.models.auth import Scope
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
from app.utils.redact import mask_url

router = APIRouter(prefix="/api/workers", tags=["workers"], route_class=StrictJsonRoute)
# Every route with a {worker_id} is also refused to a key bound to another worker (app.api.auth).
WORKER, READ = [require(Scope.WORKER)], [require(Scope.READ)]


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register_worker(
    spec: WorkerRegister, workers: WorkersDep, settings: SettingsDep, caller: WorkerCaller
) -> RegisterResponse:
    """Register (or re-register) a worker. The answer tells it where the queue is; the Redis
    password only to a worker key, or to anyone when keys are not required and the API listens
    on loopback (docs/security.md)."""
    ensure_may_act_as(caller, spec.worker_id)
    reveal = caller.holds(Scope.WORKER) if caller.key_id else settings.listens_on_loopback
    worker = await workers.register(spec)
    return RegisterResponse(
        worker=worker,
        redis_url=settings.redis_url if reveal else mask_url(settings.redis_url),
        redis_prefix=settings.redis_prefix,
        lease_seconds=settings.lease_seconds,
        lease_renew_interval=settings.lease_renew_every,
        heartbeat_interval=settings.heartbeat_interval,
        retry_backoff_base=settings.retry_backoff_base,
        retry_backoff_max=settings.retry_backoff_max,
        max_worker_losses=settings.max_worker_losses,
    )


@router.post("/{worker_id}/heartbeat", dependencies=WORKER)
async def heartbeat(worker_id: str, beat: WorkerHeartbeat, workers: WorkersDep) -> WorkerPublic:
    worker = await workers.heartbeat(worker_id, beat)
    if worker is None:
        raise not_found("worker", worker_id)
    return worker


@router.get("", dependencies=READ)
async def list_workers(workers: WorkersDep) -> WorkerList:
    found = await workers.list_all()
    return WorkerList(workers=found, total=len(found))


@router.post("/{worker_id}/start", dependencies=WORKER)
async def start_tasks(
    worker_id: str, claim: StartRequest, scheduler: SchedulerDep
) -> StartResponse:
    """Turn the worker's Redis claims into numbered attempts; refused ids must be dropped."""
    return await scheduler.start_claimed(worker_id, claim.task_ids)


@router.post("/{worker_id}/reports", dependencies=WORKER)
async def report_outcomes(
    worker_id: str, batch: ReportBatch, scheduler: SchedulerDep
) -> ReportResponse:
    """Record how attempts ended. Reports of superseded attempts come back in `refused`."""
    return await scheduler.report(worker_id, batch.reports)


@router.post("/{worker_id}/exchange", response_model=ExchangeResponse, dependencies=WORKER)
async def exchange(worker_id: str, request: ExchangeRequest, scheduler: SchedulerDep) -> Response:
    """The worker protocol in one round trip: record `reports` and start `claims` in one
    transaction. A worker sends this whenever it has claimed tasks or finished attempts."""
    answer = await scheduler.exchange(worker_id, request.reports, request.claims, request.logs)
    return json_response(answer)


@router.post("/{worker_id}/deregister", status_code=status.HTTP_204_NO_CONTENT, dependencies=WORKER)
async def deregister(worker_id: str, workers: WorkersDep) -> None:
    if not await workers.deregister(worker_id):
        raise not_found("worker", worker_id)
