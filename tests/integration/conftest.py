"""Fixtures for tests that run the scheduler as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.utils.embedded_servers import ValkeyServer
from tests.integration.harness import Stack


@pytest.fixture
async def stack(
    tmp_path: Path, valkey: ValkeyServer, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    """Processes on a fresh SQLite file and a flushed private Valkey, killed at teardown; their
    logs are printed when the test fails."""
    client = Redis.from_url(valkey.url)
    await client.flushall()
    await client.aclose()
    processes = Stack(
        tmp=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'e2e.db'}",
        redis_url=valkey.url,
        env={"LEASE_SECONDS": "2", "SWEEP_INTERVAL": "0.2", "HEARTBEAT_INTERVAL": "1"},
    )
    yield processes
    processes.stop_all()
    if getattr(request.node, "failed", False):
        print(processes.logs())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call" and report.failed:
        item.failed = True  # type: ignore[attr-defined]
    return report
