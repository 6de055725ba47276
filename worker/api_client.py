"""The worker's side of the scheduler API, with retries: a worker outlives API restarts and
database outages by waiting and trying again, never by crashing or spinning."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import httpx
import structlog

from app.models.logs import ShippedLine
from app.models.task import TaskReport
from app.models.worker import (
    ExchangeResponse,
    RegisterResponse,
    WorkerHeartbeat,
    WorkerRegister,
)
from app.utils.redact import MASK

log = structlog.get_logger(__name__)

# Any 5xx is worth another try: an outage the API could not classify is still an outage, and
# dropping a report costs a re-run. A 4xx never gets better and is not retried.
SERVER_ERROR = 500
PROBE_TIMEOUT = 2.0  # seconds; a probe slower than this counts as no contact


class ServerError(ConnectionError):
    """The API stayed unreachable or kept answering 5xx; `status_code` is the last answer's (None:
    no answer), which tells an outage (502-504) from a request the API cannot handle (500)."""

    def __init__(self, message: str, status_code: int | None) -> None:
        super().__init__(message)
        self.status_code = status_code


class WorkerUnknown(Exception):
    """The scheduler does not know this worker (its registry was reset): register again."""


class SchedulerClient:
    """`base_url` may list several API addresses, comma-separated (`--api-url a,b,c`): requests go
    to one until it fails to connect or answers 5xx, then to the next (replicas without a load
    balancer in front, or a second one behind another)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, api_key: str | None = None) -> None:
        self.bases = [url.strip().rstrip("/") for url in base_url.split(",") if url.strip()]
        if not self.bases:
            raise ValueError("no API address given")
        self.current = 0
        # The key (--api-key / API_KEY) goes on every request; without one the API must be in
        # open mode (docs/security.md).
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.http = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def close(self) -> None:
        await self.http.aclose()

    def _fail_over(self) -> bool:
        """Move on to the next address; False when there is only one."""
        if len(self.bases) == 1:
            return False
        self.current = (self.current + 1) % len(self.bases)
        log.warning("api.fail_over", to=self.bases[self.current])
        return True

    async def _post(self, path: str, body: Any, *, attempts: int | None = None) -> httpx.Response:
        """POST with exponential backoff on connection errors and 5xx, trying the other addresses
        first; `attempts=None` retries until it succeeds (registration: a worker has nothing to
        do before it)."""
        delay, tried, untried = 0.1, 0, len(self.bases) - 1
        while True:
            tried += 1
            status: int | None = None
            try:
                response = await self.http.post(self.bases[self.current] + path, json=body)
                if response.status_code < SERVER_ERROR:
                    return response
                status, reason = response.status_code, f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempts is not None and tried >= attempts:
                self._fail_over()
                raise ServerError(f"{path}: {reason}", status)
            if untried > 0 and self._fail_over():
                untried -= 1
                continue  # another replica may answer at once: no reason to wait first
            untried = len(self.bases) - 1
            log.warning("api.retry", path=path, reason=reason, delay=round(delay, 2))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 10.0)

    async def register(self, spec: WorkerRegister) -> RegisterResponse:
        response = await self._post("/api/workers/register", spec.model_dump(mode="json"))
        response.raise_for_status()
        registration = RegisterResponse.model_validate_json(response.content)
        if MASK in registration.redis_url:
            # Only a worker key gets the password (docs/security.md): say so before the Redis
            # connection fails with a less helpful authentication error.
            log.warning("register.redis_password_withheld", hint="use a worker key or REDIS_URL")
        return registration

    async def heartbeat(self, worker_id: str, beat: WorkerHeartbeat) -> None:
        response = await self._post(
            f"/api/workers/{worker_id}/heartbeat", beat.model_dump(mode="json"), attempts=3
        )
        if response.status_code == 404:
            raise WorkerUnknown(worker_id)
        response.raise_for_status()

    async def exchange(
        self,
        worker_id: str,
        reports: Sequence[TaskReport],
        claims: Sequence[str],
        logs: Sequence[ShippedLine] = (),
    ) -> ExchangeResponse:
        """One try with a short second chance: the worker keeps its reports and backs off itself
        when the API stays unavailable, handing its claims back meanwhile."""
        body: dict[str, Any] = {
            "reports": [r.model_dump(mode="json") for r in reports],
            "claims": list(claims),
        }
        if logs:  # absent, not empty, when there are none: the common request stays as it was
            body["logs"] = [line.model_dump(mode="json") for line in logs]
        response = await self._post(f"/api/workers/{worker_id}/exchange", body, attempts=2)
        response.raise_for_status()
        return ExchangeResponse.model_validate_json(response.content)

    async def probe(self) -> None:
        """One quick GET of /health/live (the next address after a failure): whether this worker
        can still reach the API, for the lease keeper's sake."""
        url = self.bases[self.current] + "/health/live"
        try:
            response = await self.http.get(url, timeout=PROBE_TIMEOUT)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self._fail_over()
            raise ServerError(f"/health/live: {type(exc).__name__}: {exc}", None) from exc

    async def deregister(self, worker_id: str) -> None:
        await self._post(f"/api/workers/{worker_id}/deregister", {}, attempts=2)
