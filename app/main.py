"""FastAPI application: `uvicorn app.main:app --port 8000`.

Clients are built in the lifespan (never at import time) and shared through app.state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import health, queues, stats, tasks, workers
from app.config import Settings, get_settings
from app.database.connection import Database
from app.services.message_queue import RedisQueue
from app.services.recovery import Recovery
from app.services.scheduler import Scheduler
from app.services.worker_manager import WorkerManager
from app.utils.logging_config import configure_logging

log = structlog.get_logger(__name__)
RETRY_AFTER_SECONDS = "5"


class CorrelationIdMiddleware:
    """Takes X-Correlation-ID from the request (or makes one), binds it to every log line of the
    request, stores it for the routes, and echoes it on the response."""

    header = b"x-correlation-id"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(self.header, b"").decode("latin-1")[:64]
        correlation_id = given or uuid.uuid4().hex
        scope.setdefault("state", {})["correlation_id"] = correlation_id

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((self.header, correlation_id.encode()))
            await send(message)

        with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
            await self.app(scope, receive, send_with_header)


# SQLSTATE classes of a database that is unreachable, starting up or shutting down:
# 08 connection exception, 57P0x operator intervention (admin shutdown, cannot connect now).
OUTAGE_SQLSTATES = ("08", "57P")


def _is_outage(exc: Exception) -> bool:
    """Connection-level failures mean the store is down; anything else is a bug, not an outage."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", "") or getattr(exc.orig, "pgcode", "") or "")
    return (
        exc.connection_invalidated
        or isinstance(exc.orig, OSError)
        or sqlstate.startswith(OUTAGE_SQLSTATES)
        or "connection" in type(exc.orig).__name__.lower()
    )


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    """The database is down: 503 with Retry-After instead of a 500. Other database errors are
    bugs: logged with their traceback, answered with a plain 500 that leaks no internals."""
    if _is_outage(exc):
        log.warning("storage.unavailable", path=request.url.path, error=type(exc).__name__)
        detail = [
            {
                "loc": [],
                "msg": "the task store is unavailable; retry shortly",
                "type": "unavailable",
            }
        ]
        return JSONResponse(
            {"detail": detail}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
        )
    log.error("storage.error", path=request.url.path, exc_info=exc)
    detail = [{"loc": [], "msg": "internal error", "type": "internal"}]
    return JSONResponse({"detail": detail}, status_code=500)


def build_services(app: FastAPI, settings: Settings) -> None:
    db = Database(settings.async_database_url)
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry_on_timeout=True,
    )
    queue = RedisQueue(
        redis,
        prefix=settings.redis_prefix,
        lease_seconds=settings.lease_seconds,
        aging_seconds=settings.priority_aging_seconds,
    )
    scheduler = Scheduler(settings, db, queue)
    worker_manager = WorkerManager(settings, db)
    app.state.settings, app.state.db, app.state.queue = settings, db, queue
    app.state.scheduler, app.state.workers = scheduler, worker_manager
    app.state.recovery = Recovery(settings, db, queue, scheduler, worker_manager)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings_override or get_settings()
    configure_logging("DEBUG" if settings.debug else settings.log_level, service="api")
    build_services(app, settings)
    await app.state.db.migrate()
    recovery: Recovery = app.state.recovery
    try:
        await recovery.on_startup()
    except Exception as exc:  # Redis may be down at start; the maintenance loop catches up
        log.warning("startup.reconcile_failed", error=str(exc))
    stop = asyncio.Event()
    maintenance = asyncio.create_task(recovery.run_forever(stop), name="maintenance")
    log.info(
        "api.started", database=settings.async_database_url.split("@")[-1], redis=settings.redis_url
    )
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(maintenance, timeout=10)
        except TimeoutError:
            log.warning("maintenance.stop_timeout")
        await app.state.queue.redis.aclose()
        await app.state.db.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="Distributed Task Scheduler",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings_override = settings
    app.add_middleware(CorrelationIdMiddleware)
    for exc_type in (DBAPIError, OSError, TimeoutError):
        app.add_exception_handler(exc_type, _storage_error)
    app.include_router(tasks.router)
    app.include_router(workers.router)
    app.include_router(queues.router)
    app.include_router(stats.router)
    app.include_router(health.router)
    return app


app = create_app()
