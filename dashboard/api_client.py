"""The dashboard's only way to the scheduler: its HTTP API (URL from the API_URL variable, key from
API_KEY: a key with the read scope, plus submit and operate for the actions; docs/security.md).
Both come from the environment or, like every setting of the stack, from `.env`.

Every failure becomes an ApiError with a sentence an operator can act on; views show it and never
a stack trace. Endpoints that an older API lacks answer NotSupported, so a view can degrade."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.config import is_loopback

DEFAULT_API_URL = "http://localhost:8000"
# Connecting fails fast (a down API must not freeze the page); reading may take a while for the
# aggregate endpoints on a large database.
TIMEOUT = httpx.Timeout(10.0, connect=2.0)


class DashboardSettings(BaseSettings):
    """What the dashboard reads from the environment and `.env` (the environment wins), the
    same file as the API's Settings: without it a dashboard started next to a stack whose .env
    moved the API elsewhere silently showed another API's data."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    api_url: str = DEFAULT_API_URL
    api_key: str | None = None
    # This stack's API port (the API's own setting): a local API_URL elsewhere is worth a word.
    api_port: int | None = None


def settings() -> DashboardSettings:
    """Read on every call (a small file): a changed .env or environment shows on the next
    rerun, and tests may point the dashboard elsewhere between runs."""
    return DashboardSettings()


def api_url() -> str:
    return settings().api_url.rstrip("/")


def api_key() -> str | None:
    return settings().api_key or None


def api_mismatch() -> str | None:
    """A sentence when API_URL names a local API on another port than this stack's API_PORT:
    the dashboard then shows another stack's data."""
    found = settings()
    if found.api_port is None:
        return None
    url = urlsplit(found.api_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    if not is_loopback(url.hostname or "") or port == found.api_port:
        return None
    return (
        f"This dashboard reads the API at {found.api_url.rstrip('/')}, but this stack's API "
        f"listens on port {found.api_port} (API_PORT): the data shown is another API's. "
        f"Set API_URL (in .env or the environment) to point at this stack's API."
    )


class ApiError(Exception):
    """The API answered with an error; the message says what was wrong, in its words."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiUnavailable(ApiError):
    """The API cannot be reached, or it or one of its stores is down (5xx)."""


class NotSupported(ApiError):
    """The API has no such endpoint (an older version of the scheduler)."""


class NotFound(ApiError):
    """The endpoint exists but the resource (a task, a worker) does not."""


def describe_errors(body: Any) -> str:
    """`{"detail": [{"loc", "msg"}]}` -> "priority: must be <= 10"; anything else as text."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(x) for x in item.get("loc", []) if x not in ("body", "query", "path")]
            parts.append(f"{'.'.join(loc)}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts)
    return str(detail)


def _error_for(response: httpx.Response) -> ApiError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    status = response.status_code
    # FastAPI answers an unknown route with a bare string; a missing task comes as a field error.
    if status == 405 or (
        status == 404 and isinstance(body, dict) and body.get("detail") == "Not Found"
    ):
        return NotSupported(f"{response.request.url.path} is not available on this API", status)
    message = describe_errors(body)
    if status == 401:
        return ApiError(f"the API wants a valid key: set API_KEY ({message})", status)
    if status == 403:
        return ApiError(f"the key in API_KEY may not do this ({message})", status)
    if status == 404:
        return NotFound(message, status)
    if status >= 500:
        return ApiUnavailable(f"the API answered {status}: {message}", status)
    return ApiError(message, status)


class ApiClient:
    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        key: str | None = None,
    ) -> None:
        self.base_url = base_url
        key = key or api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else None
        self.http = httpx.Client(
            base_url=base_url, timeout=TIMEOUT, transport=transport, headers=headers
        )

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiUnavailable(
                f"cannot reach the scheduler API at {self.base_url} ({reason})"
            ) from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        if response.is_error:
            raise _error_for(response)
        body = response.json()
        if not isinstance(body, dict):
            raise ApiError(f"{path} answered with something other than a JSON object")
        return body

    # --- reads ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """{"status", "database", "redis"}; a degraded API (503) still answers with the body."""
        response = self._send("GET", "/health")
        if response.status_code not in (200, 503):
            raise _error_for(response)
        body: dict[str, Any] = response.json()
        return body

    def overview(self) -> dict[str, Any]:
        return self._call("GET", "/api/stats/overview")

    def timeseries(self, *, minutes: int, bucket_seconds: int) -> dict[str, Any]:
        params = {"minutes": minutes, "bucket_seconds": bucket_seconds}
        return self._call("GET", "/api/stats/timeseries", params=params)

    def durations(self, *, minutes: int, limit: int = 2000) -> dict[str, Any]:
        params = {"minutes": minutes, "limit": limit}
        return self._call("GET", "/api/stats/durations", params=params)

    def task_page(self, **filters: Any) -> dict[str, Any]:
        """GET /api/stats/tasks; `status` may be a list. None-valued filters are left out."""
        params = {k: v for k, v in filters.items() if v not in (None, [], "")}
        return self._call("GET", "/api/stats/tasks", params=params)

    def task(self, task_id: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/api/tasks/{task_id}")
        except NotFound:
            return None

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self._call("GET", "/api/workers")["workers"]
        return workers

    def graph(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/tasks/{task_id}/graph")

    def task_logs(
        self, task_id: str, *, attempt: int | None = None, after: int | None = None
    ) -> dict[str, Any]:
        """One page of a task's log lines (GET /api/tasks/{id}/logs): `lines`, `next_after`."""
        params = {k: v for k, v in {"attempt": attempt, "after": after}.items() if v is not None}
        return self._call("GET", f"/api/tasks/{task_id}/logs", params=params)

    # --- actions -------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/tasks", json=spec)

    def submit_batch(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        created: list[dict[str, Any]] = self._call(
            "POST", "/api/tasks/batch", json={"tasks": specs}
        )["tasks"]
        return created

    # The JSON content type (of an empty body) is what the API asks of state-changing calls
    # made without a key: a cross-site HTML form cannot send it (app/api/limits.py).
    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/tasks/{task_id}/cancel", json={})

    def retry(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/tasks/{task_id}/retry", json={})

    # --- schedules (docs/schedules.md) -----------------------------------------------------------

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule, each with its next fire and its latest few fires."""
        found: list[dict[str, Any]] = self._call("GET", "/api/schedules")["schedules"]
        return found

    def schedule(self, schedule_id: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/api/schedules/{schedule_id}")
        except NotFound:
            return None

    def create_schedule(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/schedules", json=spec)

    def update_schedule(self, schedule_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"/api/schedules/{schedule_id}", json=changes)

    def trigger_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/schedules/{schedule_id}/trigger", json={})

    def delete_schedule(self, schedule_id: str) -> None:
        # No body to answer (204), and the JSON content type the API wants without a key.
        headers = {"Content-Type": "application/json"}
        response = self._send("DELETE", f"/api/schedules/{schedule_id}", headers=headers)
        if response.is_error:
            raise _error_for(response)
