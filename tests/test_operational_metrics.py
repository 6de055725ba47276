"""The metrics the alert rules (deploy/prometheus/alerts.yml) are written on: live workers, ready
tasks no live worker can run, queue depths that fall back to 0 when a queue empties, workers
lost, and the API's 429 and 5xx answers."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.models.task import ReadyTask
from app.models.worker import WorkerRegister
from app.utils import monitoring
from tests.conftest import Services


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_leader_reports_workers_and_types_no_worker_can_run(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other tests may have used up the bounded set of type labels in this process.
    monkeypatch.setattr(monitoring, "_task_type_labels", set())
    await services.workers.register(WorkerRegister(worker_id="m-w1", capabilities=["echo"]))
    await services.queue.enqueue([ReadyTask("m-a", "echo", 1), ReadyTask("m-b", "m-ghost", 1)])
    await services.recovery._record_depths()
    assert sample("dts_workers_online") == 1
    assert sample("dts_queue_unroutable", task_type="m-ghost") == 1
    assert sample("dts_queue_unroutable", task_type="echo") == 0
    assert sample("dts_queue_depth", task_type="m-ghost") == 1

    await services.queue.forget(["m-b"])  # the queue empties: Redis deletes its key
    await services.recovery._record_depths()
    assert sample("dts_queue_depth", task_type="m-ghost") == 0
    assert sample("dts_queue_unroutable", task_type="m-ghost") == 0


async def test_silent_workers_count_as_lost(services: Services) -> None:
    await services.workers.register(WorkerRegister(worker_id="m-w2", capabilities=["echo"]))
    before = sample("dts_workers_lost_total")
    assert await services.workers.mark_silent_offline() == []
    assert sample("dts_workers_lost_total") == before
    services.settings.heartbeat_interval = 0.01  # silent after a few ms
    deadline = asyncio.get_running_loop().time() + 5
    while not await services.workers.mark_silent_offline():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert sample("dts_workers_lost_total") == before + 1


async def test_error_answers_are_counted_by_status() -> None:
    async def answer(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=int(request.path_params["status"]))

    app = monitoring.ErrorResponseCounter(Starlette(routes=[Route("/{status:int}", answer)]))
    before = {s: sample("dts_http_errors_total", status=s) for s in ("503", "429", "200", "404")}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for status in (503, 503, 429, 200, 404):
            assert (await c.get(f"/{status}")).status_code == status
    after = {s: sample("dts_http_errors_total", status=s) for s in before}
    assert {s: after[s] - before[s] for s in before} == {"503": 2, "429": 1, "200": 0, "404": 0}
