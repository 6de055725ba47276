"""Dependency aliases for routes. The services are built once in the lifespan (app.main).
The getters are `async def` so FastAPI calls them inline instead of in its thread pool."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.database.connection import Database
from app.services.auth import KeyStore
from app.services.scheduler import Scheduler
from app.services.worker_manager import WorkerManager


async def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler  # type: ignore[no-any-return]


async def _workers(request: Request) -> WorkerManager:
    return request.app.state.workers  # type: ignore[no-any-return]


async def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _keys(request: Request) -> KeyStore:
    return request.app.state.keys  # type: ignore[no-any-return]


async def _correlation_id(request: Request) -> str | None:
    value: str | None = request.scope.get("state", {}).get("correlation_id")
    return value


SchedulerDep = Annotated[Scheduler, Depends(_scheduler)]
WorkersDep = Annotated[WorkerManager, Depends(_workers)]
DatabaseDep = Annotated[Database, Depends(_db)]
SettingsDep = Annotated[Settings, Depends(_settings)]
KeysDep = Annotated[KeyStore, Depends(_keys)]
CorrelationId = Annotated[str | None, Depends(_correlation_id)]
