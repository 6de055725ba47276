"""How a worker's exchanges reach the scheduler's guarded transitions.

Both transports run the same `Scheduler.exchange` (app/services/scheduler.py), one statement per
batch, so they keep the same guarantees:
- over HTTP (the default): the API runs it; the worker needs nothing but the API's address;
- in process (`--database-url`): the worker runs it itself against the database. No HTTP in the
  hot path and the database work spread over the worker processes (docs/architecture.md says
  when to choose it)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app.config import Settings
from app.database.connection import Database
from app.models.logs import ShippedLine
from app.models.task import TaskReport
from app.models.worker import ExchangeResponse, RegisterResponse
from app.services.message_queue import RedisQueue
from app.services.scheduler import Scheduler
from worker.api_client import SchedulerClient, ServerError


class Unavailable(Exception):
    """The scheduler could not take the exchange now (outage, restart): keep the reports, hand
    the claims back, and try again later."""


class Rejected(Exception):
    """The scheduler refused the exchange itself (a 4xx), or failed on it for a reason that is
    not an outage (a 500 that outlived the client's retry): retrying it will not help."""


# Answers that mean "not now" (a proxy without a backend, the API's database outage or its
# concurrency limit): the same exchange will pass later. Any other 5xx will not.
OUTAGE_STATUSES = frozenset({502, 503, 504})


class Transport(Protocol):
    async def exchange(
        self,
        worker_id: str,
        reports: Sequence[TaskReport],
        claims: Sequence[str],
        logs: Sequence[ShippedLine] = (),
    ) -> ExchangeResponse:
        """`logs`: handlers' output, stored apart from the reports (never at their cost)."""
        ...

    async def probe(self) -> None:
        """Prove the scheduler is reachable (raises Unavailable): a worker that cannot reach it
        must let its leases lapse (WorkerNode.held_leases)."""
        ...

    async def close(self) -> None: ...


class HttpTransport:
    def __init__(self, api: SchedulerClient) -> None:
        self.api = api

    async def exchange(
        self,
        worker_id: str,
        reports: Sequence[TaskReport],
        claims: Sequence[str],
        logs: Sequence[ShippedLine] = (),
    ) -> ExchangeResponse:
        try:
            return await self.api.exchange(worker_id, reports, claims, logs)
        except ServerError as exc:
            if exc.status_code is None or exc.status_code in OUTAGE_STATUSES:
                raise Unavailable(str(exc)) from exc
            raise Rejected(str(exc)) from exc
        except (ConnectionError, OSError) as exc:
            raise Unavailable(str(exc)) from exc
        except httpx.HTTPStatusError as exc:
            body = exc.response.text[:500]
            raise Rejected(f"HTTP {exc.response.status_code}: {body}") from exc

    async def probe(self) -> None:
        try:
            await self.api.probe()
        except (ServerError, ConnectionError, OSError, httpx.HTTPError) as exc:
            raise Unavailable(str(exc)) from exc

    async def close(self) -> None:
        """The API client belongs to the worker, which closes it."""


class ServerClock:
    """The database server's time, as this process's clock plus an offset read now and then.
    A worker that runs the transitions stamps them with it (start times, backoffs, the start's
    `scheduled_at` guard, database leases): a worker whose clock is off by 30 s must not record
    a start before the task was created, nor start a retry 30 s early."""

    REFRESH_SECONDS = 30.0

    def __init__(self, db: Database) -> None:
        self.db = db
        self.offset = timedelta(0)
        self.read_at: float | None = None

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    async def sync(self) -> None:
        """Read the server's clock again when the last reading is old."""
        if self.read_at is not None and time.monotonic() - self.read_at < self.REFRESH_SECONDS:
            return
        self.offset = await self.db.clock_offset()
        self.read_at = time.monotonic()


class LocalTransport:
    """Runs the exchange in this process, with a database engine and Redis client of its own."""

    def __init__(self, scheduler: Scheduler, clock: ServerClock) -> None:
        self.scheduler = scheduler
        self.clock = clock

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
            max_worker_losses=registration.max_worker_losses,
        )
        db = Database(settings.async_database_url, pool_size=2)
        queue = RedisQueue(
            redis, prefix=registration.redis_prefix, lease_seconds=registration.lease_seconds
        )
        clock = ServerClock(db)
        return cls(Scheduler(settings, db, queue, clock=clock.now), clock)

    async def exchange(
        self,
        worker_id: str,
        reports: Sequence[TaskReport],
        claims: Sequence[str],
        logs: Sequence[ShippedLine] = (),
    ) -> ExchangeResponse:
        try:
            await self.clock.sync()
            return await self.scheduler.exchange(worker_id, reports, claims, logs)
        except (OperationalError, InterfaceError, DBAPIError, OSError, RedisError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    async def probe(self) -> None:
        try:
            await self.scheduler.db.ping()
        except (OperationalError, InterfaceError, DBAPIError, OSError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self.scheduler.db.dispose()
