"""Liveness of the scheduler's dependencies, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import DatabaseDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request, db: DatabaseDep) -> JSONResponse:
    """200 when the database and Redis answer; 503 naming what is down otherwise."""
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
    healthy = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if healthy else "degraded", **checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(settings: SettingsDep) -> Response:
    """Prometheus exposition of this process's counters (METRICS_ENABLED=false turns it off)."""
    if not settings.metrics_enabled:
        return Response(status_code=404)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
