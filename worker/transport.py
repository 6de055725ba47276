"""How a worker's exchanges reach the scheduler's guarded transitions.

Both transports run the same `Scheduler.exchange` (app/services/scheduler.py), one statement per
batch, so they keep the same guarantees:
- over HTTP (the default): the API runs it; the worker needs nothing but the API's address;
- in process (`--database-url`): the worker runs it itself against the database. No HTTP in the
  hot path and the database work spread over the worker processes (docs/architecture.md says
  when to choose it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app.config import Settings
from app.database.connection import Database
from app.models.task import TaskReport
from app.models.worker import ExchangeResponse, RegisterResponse
from app.services.message_queue import RedisQueue
from app.services.scheduler import Scheduler
from worker.api_client import SchedulerClient


class Unavailable(Exception):
    """The scheduler could not take the exchange now (outage, restart): keep the reports, hand
    the claims back, and try again later."""


class Rejected(Exception):
    """The scheduler refused the exchange itself (a 4xx): retrying it will not help."""


class Transport(Protocol):
    async def exchange(
        self, worker_id: str, reports: Sequence[TaskReport], claims: Sequence[str]
    ) -> ExchangeResponse: ...

    async def close(self) -> None: ...


class HttpTransport:
    def __init__(self, api: SchedulerClient) -> None:
        self.api = api

    async def exchange(
        self, worker_id: str, reports: Sequence[TaskReport], claims: Sequence[str]
    ) -> ExchangeResponse:
        try:
            return await self.api.exchange(worker_id, reports, claims)
        except (ConnectionError, OSError) as exc:
            raise Unavailable(str(exc)) from exc
        except httpx.HTTPStatusError as exc:
            body = exc.response.text[:500]
            raise Rejected(f"HTTP {exc.response.status_code}: {body}") from exc

    async def close(self) -> None:
        """The API client belongs to the worker, which closes it."""


class LocalTransport:
    """Runs the exchange in this process, with a database engine and Redis client of its own."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    @classmethod
    def connect(
        cls, database_url: str, registration: RegisterResponse, redis: Redis
    ) -> LocalTransport:
        # The API's reliability settings (from the registration), so both sides agree on them.
        settings = Settings(
            database_url=database_url,
            redis_prefix=registration.redis_prefix,
            lease_seconds=registration.lease_seconds,
            heartbeat_interval=registration.heartbeat_interval,
            retry_backoff_base=registration.retry_backoff_base,
            retry_backoff_max=registration.retry_backoff_max,
        )
        db = Database(settings.async_database_url, pool_size=2)
        queue = RedisQueue(
            redis, prefix=registration.redis_prefix, lease_seconds=registration.lease_seconds
        )
        return cls(Scheduler(settings, db, queue))

    async def exchange(
        self, worker_id: str, reports: Sequence[TaskReport], claims: Sequence[str]
    ) -> ExchangeResponse:
        try:
            return await self.scheduler.exchange(worker_id, reports, claims)
        except (OperationalError, InterfaceError, DBAPIError, OSError, RedisError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self.scheduler.db.dispose()
