"""FastAPI application: `python -m app.main` (uvicorn with the limits of Settings, see main()).

Clients are built in the lifespan (never at import time) and shared through app.state."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import health, keys, logs, queues, stats, tasks, workers
from app.api import schedules as schedules_api
from app.api.errors import declare_errors, http_error, validation_error
from app.api.limits import (
    ConfiguredCors,
    LimitsMiddleware,
    RateLimiter,
    bounded_http_protocol,
)
from app.config import Settings, get_settings
from app.database.connection import Database
from app.services.auth import KeyStore
from app.services.message_queue import RedisQueue
from app.services.recovery import Recovery
from app.services.scheduler import Scheduler
from app.services.schedules import ScheduleService
from app.services.task_logs import Retention
from app.services.worker_manager import WorkerManager
from app.utils import monitoring
from app.utils.logging_config import configure_logging
from app.utils.redact import mask_url

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
    app.state.schedules = ScheduleService(settings, db, scheduler)
    admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
    app.state.rate_limiter = RateLimiter(redis, settings)
    app.state.keys = KeyStore(db, cache_seconds=settings.api_key_cache_seconds, admin_key=admin_key)
    # Asked on every request; working it out reads uvicorn's command line.
    app.state.auth_enforced = settings.auth_enforced


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings_override or get_settings()
    configure_logging("DEBUG" if settings.debug else settings.log_level, service="api")
    build_services(app, settings)
    await app.state.db.migrate()
    recovery: Recovery = app.state.recovery
    # Periodic schedules fire from the leader's tick only (docs/schedules.md).
    recovery.leader_steps.append(app.state.schedules.fire_due)
    if settings.retention_days > 0:  # docs/architecture.md, "Retention"
        clock = app.state.scheduler.clock
        retention = Retention(app.state.db, days=settings.retention_days, clock=clock)
        recovery.leader_steps.append(retention.step)
    try:
        await recovery.on_startup()
    except Exception as exc:  # Redis may be down at start; the maintenance loop catches up
        log.warning("startup.reconcile_failed", error=str(exc))
    stop = asyncio.Event()
    maintenance = asyncio.create_task(recovery.run_forever(stop), name="maintenance")
    # What start-up loaded (modules, the app, its services) lives as long as the process: out of
    # the collector's sight, a full collection no longer walks it. Full collections took 95-170 ms
    # here, each a pause of every request in flight; after the freeze, about 0.5 ms.
    gc.collect()
    gc.freeze()
    log.info(
        "api.started",
        database=mask_url(settings.async_database_url),
        redis=mask_url(settings.redis_url),
        auth_required=settings.auth_enforced,
    )
    if not settings.auth_enforced:
        # Anyone who can reach the port may submit, cancel and run work: say so at every start.
        log.warning(
            "auth.open",
            host=settings.listen_host,
            reason="AUTH_REQUIRED=false" if settings.auth_required is False else "loopback host",
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
    # Outermost last: the error counter, CORS (answers preflights), correlation id, then the
    # limits.
    app.add_middleware(LimitsMiddleware)
    app.add_middleware(CorrelationIdMiddleware)
    app.add_middleware(ConfiguredCors)
    app.add_middleware(monitoring.ErrorResponseCounter)
    for exc_type in (DBAPIError, OSError, TimeoutError):
        app.add_exception_handler(exc_type, _storage_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(tasks.router)
    app.include_router(logs.router)
    app.include_router(workers.router)
    app.include_router(queues.router)
    app.include_router(stats.router)
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(schedules_api.router)
    document_errors(app)
    return app


def document_errors(app: FastAPI) -> None:
    """Every error status each operation can answer, in the OpenAPI document (app.api.errors)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m app.main [--host H] [--port P] [--workers N]`: the API under uvicorn with the
    HTTP server's limits from Settings (MAX_HEADER_BYTES, HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT,
    LIMIT_CONCURRENCY). Plain `uvicorn app.main:app` runs without the header bounds."""
    parser = argparse.ArgumentParser(prog="python -m app.main", description=main.__doc__)
    parser.add_argument("--host", help="bind address (default: API_HOST)")
    parser.add_argument("--port", type=int, help="port (default: API_PORT)")
    parser.add_argument(
        "--workers", type=int, help="API processes sharing the port (default: API_WORKERS, 1)"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    host = args.host or settings.api_host
    workers = args.workers or settings.api_workers
    options: dict[str, Any] = {
        "host": host,
        "port": args.port or settings.api_port,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.limit_concurrency,
        # uvicorn's own lines (start-up, access log) follow LOG_LEVEL like ours.
        "log_level": "debug" if settings.debug else settings.log_level.lower(),
    }
    if workers > 1:
        # The processes import the app by name and read Settings from the environment: --host
        # must reach them there (keys are required unless it is loopback, docs/security.md).
        os.environ["API_HOST"] = host
        prepare_metrics_directory()
        http = "app.api.limits:SettingsHttpProtocol"
        uvicorn.run("app.main:app", workers=workers, http=http, **options)
        return
    # Keys are required unless the API listens on loopback (docs/security.md): the app learns
    # where it listens from API_HOST, so --host must reach it too.
    app.state.settings_override = settings.model_copy(update={"api_host": host})
    uvicorn.run(app, http=bounded_http_protocol(settings), **options)


def prepare_metrics_directory() -> None:
    """Several processes: each writes its metrics to files that /metrics sums up (multiprocess
    mode, app/utils/monitoring.py), in a directory that must start empty on every run."""
    directory = os.environ.get(monitoring.MULTIPROC_DIR)
    if not directory:
        directory = tempfile.mkdtemp(prefix="dts-metrics-")
        os.environ[monitoring.MULTIPROC_DIR] = directory
    for stale in Path(directory).glob("*.db"):
        stale.unlink()


if __name__ == "__main__":
    main()
