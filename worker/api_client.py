"""The worker's side of the scheduler API, with retries: a worker outlives API restarts and
database outages by waiting and trying again, never by crashing or spinning."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import httpx
import structlog

from app.models.task import TaskReport
from app.models.worker import (
    ExchangeResponse,
    RegisterResponse,
    WorkerHeartbeat,
    WorkerRegister,
)

log = structlog.get_logger(__name__)

# Any 5xx is worth another try: an outage the API could not classify is still an outage, and
# dropping a report costs a re-run. A 4xx never gets better and is not retried.
SERVER_ERROR = 500


class WorkerUnknown(Exception):
    """The scheduler does not know this worker (its registry was reset): register again."""


class SchedulerClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def close(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: Any, *, attempts: int | None = None) -> httpx.Response:
        """POST with exponential backoff on connection errors and 5xx; `attempts=None` retries
        until it succeeds (registration: a worker has nothing to do before it)."""
        delay, tried = 0.1, 0
        while True:
            tried += 1
            try:
                response = await self.http.post(path, json=body)
                if response.status_code < SERVER_ERROR:
                    return response
                reason = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempts is not None and tried >= attempts:
                raise ConnectionError(f"{path}: {reason}")
            log.warning("api.retry", path=path, reason=reason, delay=round(delay, 2))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 10.0)

    async def register(self, spec: WorkerRegister) -> RegisterResponse:
        response = await self._post("/api/workers/register", spec.model_dump(mode="json"))
        response.raise_for_status()
        return RegisterResponse.model_validate_json(response.content)

    async def heartbeat(self, worker_id: str, beat: WorkerHeartbeat) -> None:
        response = await self._post(
            f"/api/workers/{worker_id}/heartbeat", beat.model_dump(mode="json"), attempts=3
        )
        if response.status_code == 404:
            raise WorkerUnknown(worker_id)
        response.raise_for_status()

    async def exchange(
        self, worker_id: str, reports: Sequence[TaskReport], claims: Sequence[str]
    ) -> ExchangeResponse:
        """One try with a short second chance: the worker keeps its reports and backs off itself
        when the API stays unavailable, handing its claims back meanwhile."""
        body = {"reports": [r.model_dump(mode="json") for r in reports], "claims": list(claims)}
        response = await self._post(f"/api/workers/{worker_id}/exchange", body, attempts=2)
        response.raise_for_status()
        return ExchangeResponse.model_validate_json(response.content)

    async def deregister(self, worker_id: str) -> None:
        await self._post(f"/api/workers/{worker_id}/deregister", {}, attempts=2)
