"""Several API processes on one port (`python -m app.main --workers 2`) on PostgreSQL: both
serve, a worker's tasks complete through them, and /metrics is the sum over the processes
whichever one answers (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from app.utils.embedded_servers import PostgresServer, free_port
from tests.integration.harness import Stack, eventually, wait_for_status

pytestmark = pytest.mark.e2e

SUBMITTED = re.compile(r'^dts_tasks_submitted_total\{task_type="echo"\} (\S+)$', re.M)


def submitted_by_process(metrics_dir: Path) -> dict[str, float]:
    """Tasks each process counted, read from its own file."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        for key, value, *_rest in MmapedDict.read_all_values_from_file(str(path)):
            if '"dts_tasks_submitted_total"' in key and value:
                counts[path.stem] = counts.get(path.stem, 0) + value
    return counts


async def scrape_total(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics", headers={"Connection": "close"})).text
    found = SUBMITTED.search(text)
    return float(found.group(1)) if found else 0.0


async def test_two_api_processes_serve_one_port_and_sum_their_metrics(
    stack: Stack, postgres: PostgresServer | None, tmp_path: Path
) -> None:
    if postgres is None:
        pytest.skip("needs the private PostgreSQL server")
    stack.database_url = postgres.create_database(f"r_{uuid.uuid4().hex[:12]}")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stack.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    stack.api_port = free_port()
    command = [sys.executable, "-m", "app.main", "--host", "127.0.0.1"]
    command += ["--port", str(stack.api_port), "--workers", "2"]
    stack.api = stack._spawn("api-replicas", command)
    await eventually(stack._healthy, timeout=60, what="the API processes to answer")
    stack.start_worker("worker-r")
    sent = 0
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        # New connections until both processes have taken submissions (bounded).
        while len(submitted_by_process(metrics_dir)) < 2:
            assert sent < 400, (
                f"one process took every connection: {submitted_by_process(metrics_dir)}"
            )
            batch = [
                http.post(
                    "/api/tasks",
                    json={"task_id": f"r-{sent + i}", "task_type": "echo"},
                    headers={"Connection": "close"},
                )
                for i in range(8)
            ]
            assert {r.status_code for r in await asyncio.gather(*batch)} == {201}
            sent += 8
        assert [await scrape_total(http) for _ in range(6)] == [float(sent)] * 6
        await wait_for_status(http, f"r-{sent - 1}", "completed")
        for i in range(sent):
            await wait_for_status(http, f"r-{i}", "completed")
