"""examples/dag_with_client.py runs as documented: against a real API and worker process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.utils.embedded_servers import ValkeyServer
from tests.integration.harness import ROOT, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack(tmp_path: Path, valkey: ValkeyServer) -> AsyncIterator[Stack]:
    redis = Redis.from_url(valkey.url)
    await redis.flushall()
    await redis.aclose()
    processes = Stack(
        tmp=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'example.db'}",
        redis_url=valkey.url,
        env={"LEASE_SECONDS": "2", "SWEEP_INTERVAL": "0.2", "HEARTBEAT_INTERVAL": "1"},
    )
    yield processes
    processes.stop_all()


async def test_the_dag_example_completes_and_prints_results_and_logs(stack: Stack) -> None:
    await stack.start_api()
    stack.start_worker("example-1")
    await stack.wait_for_workers("example-1")
    env = {**os.environ, "API_URL": stack.api_url, "COLUMNS": "200"}
    env.pop("API_KEY", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/dag_with_client.py",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    text = output.decode()
    assert process.returncode == 0, text
    assert "3/3" in text
    assert 'processing: completed -> {"normalized": "hello dag"' in text
    assert 'log_lines: completed -> {"lines": 2}' in text
    for line in ("[stdout] line 0", "[stdout] line 1", "[stderr] to stderr"):
        assert line in text
