"""Liveness of the scheduler's dependencies, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import metrics_access
from app.api.deps import DatabaseDep, SettingsDep
from app.database.connection import Database
from app.utils import monitoring

router = APIRouter(tags=["health"])


async def _checks(request: Request, db: Database) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        await db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "down"; the reason is reported, not raised
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await request.app.state.queue.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    return checks


@router.get("/health")
async def health(request: Request, db: DatabaseDep) -> JSONResponse:
    """200 when the database and Redis answer; 503 naming what is down otherwise."""
    checks = await _checks(request, db)
    healthy = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if healthy else "degraded", **checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/health/live")
async def live(request: Request) -> dict[str, str | bool]:
    """The process answers (a liveness probe: restart it when this fails). `leader` says whether
    this process runs the periodic work now (one replica at a time)."""
    return {"status": "alive", "leader": request.app.state.recovery.leading}


@router.get("/health/ready")
async def ready(request: Request, db: DatabaseDep) -> JSONResponse:
    """Whether this process can accept work (a readiness probe: route to it or not). Only the
    database decides: a submission is durable once committed, and reconciliation queues it
    when Redis returns, so Redis down is `degraded`, still ready."""
    checks = await _checks(request, db)
    if checks["database"] != "ok":
        return JSONResponse({"status": "unready", **checks}, status_code=503)
    status = "ready" if checks["redis"] == "ok" else "degraded"
    return JSONResponse({"status": status, **checks}, status_code=200)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
async def metrics(settings: SettingsDep) -> Response:
    """Prometheus exposition of this process's counters (METRICS_ENABLED=false turns it off;
    METRICS_PUBLIC=false asks for a key with the read scope)."""
    if not settings.metrics_enabled:
        return Response(status_code=404)
    return Response(generate_latest(monitoring.scrape_registry()), media_type=CONTENT_TYPE_LATEST)
