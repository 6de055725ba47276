"""Health probes (a load balancer's view of one API process): liveness is the process
answering; readiness is the database answering, with Redis down only `degraded`."""

from __future__ import annotations

import httpx

from app.config import Settings
from app.utils.embedded_servers import free_port
from tests.conftest import running


async def test_a_healthy_process_is_live_and_ready(api: httpx.AsyncClient) -> None:
    live = (await api.get("/health/live")).json()
    assert live["status"] == "alive" and isinstance(live["leader"], bool)
    ready = await api.get("/health/ready")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")


async def test_without_redis_the_process_stays_ready_but_degraded(settings: Settings) -> None:
    settings.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with running(settings) as client:
        ready = await client.get("/health/ready")
        health = await client.get("/health")
        live = await client.get("/health/live")
    assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
    assert ready.json()["redis"].startswith("error")
    assert (health.status_code, live.status_code) == (503, 200)
