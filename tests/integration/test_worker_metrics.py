"""A worker started with --metrics-port serves its own Prometheus metrics: attempts by type and
outcome, their run time, its slots and what it is running."""

from __future__ import annotations

import re

import httpx
import pytest

from app.utils.embedded_servers import free_port
from tests.integration.harness import Stack, eventually, wait_for_status

pytestmark = pytest.mark.e2e


def value(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_worker_exports_what_it_ran(stack: Stack) -> None:
    await stack.start_api()
    port = free_port()
    stack.start_worker("wm-1", "--metrics-port", str(port), "--max-concurrent-tasks", "4")
    await stack.wait_for_workers("wm-1")
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
        for n in range(3):
            await http.post("/api/tasks", json={"task_id": f"wm-e{n}", "task_type": "echo"})
        bad = {"task_id": "wm-f", "task_type": "fail", "max_retries": 0}
        await http.post("/api/tasks", json=bad)
        for n in range(3):
            await wait_for_status(http, f"wm-e{n}", "completed")
        await wait_for_status(http, "wm-f", "failed")

    async def scraped() -> str | None:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        done = 'dts_worker_tasks_total{outcome="completed",task_type="echo"}'
        return (
            text if value(text, done) == 3 and value(text, "dts_worker_slots_used") == 0 else None
        )

    text = await eventually(scraped, timeout=10, what="the worker's metrics to show its tasks")
    assert value(text, 'dts_worker_tasks_total{outcome="error",task_type="fail"}') == 1
    assert value(text, 'dts_worker_task_seconds_count{task_type="echo"}') == 3
    assert value(text, "dts_worker_slots") == 4
