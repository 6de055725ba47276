"""All configuration, read once from the environment and `.env` (names follow the seed)."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SQLITE_PATH = Path("data") / "scheduler.db"


def to_async_database_url(url: str | None) -> str:
    """Map the seed's URL forms onto the async drivers SQLAlchemy needs."""
    if not url:
        DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    return url


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; a wildcard (0.0.0.0, ::) or a name is not loopback."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def uvicorn_host(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Where uvicorn listens when this process is its command line (`uvicorn app.main:app ...`
    or `python -m uvicorn ...`); None otherwise. The app cannot ask uvicorn: it binds its socket
    after the app has started. A Unix socket or an inherited descriptor gives "" (unknown)."""
    if not argv or "uvicorn" not in (Path(argv[0]).name, Path(argv[0]).parent.name):
        return None
    if environ.get("UVICORN_UDS") or environ.get("UVICORN_FD"):
        return ""
    host = environ.get("UVICORN_HOST", "127.0.0.1")  # uvicorn's own default
    for i, arg in enumerate(argv[1:], start=1):
        if arg in ("--uds", "--fd") or arg.startswith(("--uds=", "--fd=")):
            return ""
        if arg == "--host" and i + 1 < len(argv):
            host = argv[i + 1]
        elif arg.startswith("--host="):
            host = arg.removeprefix("--host=")
    return host


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # API (seed names)
    api_host: str = "0.0.0.0"
    api_port: int = 8000
    # Processes of `python -m app.main` sharing the port (one leader does the periodic work).
    api_workers: int = Field(default=1, ge=1)
    debug: bool = False

    # Stores
    database_url: str | None = None
    redis_url: str = "redis://localhost:6379/0"
    redis_prefix: str = "dts"

    # Workers (seed names). MAX_WORKERS: tasks a worker node runs at once by default, and the
    # size of its thread and process pools.
    max_workers: int = Field(default=10, ge=1)
    # A worker's --database-url: run its starts and reports in process (PostgreSQL only).
    worker_database_url: str | None = None
    task_timeout: int = Field(default=300, ge=1)
    heartbeat_interval: float = Field(default=30.0, gt=0)

    # Monitoring (seed names)
    log_level: str = "INFO"
    metrics_enabled: bool = True
    # False: /metrics needs a key with the read scope, like the rest of the API.
    metrics_public: bool = True

    # Access (docs/security.md). AUTH_REQUIRED unset: keys are required unless the API listens
    # on a loopback address (uvicorn's --host, else API_HOST); an unknown host counts as exposed.
    auth_required: bool | None = None
    # Bootstraps the first admin key: accepted by its hash, never stored.
    admin_api_key: SecretStr | None = None
    # How long a verified key is trusted without a database read: the revocation bound.
    api_key_cache_seconds: float = Field(default=5.0, ge=0)

    # Limits on what the API accepts (docs/api_reference.md, "Limits")
    max_payload_bytes: int = 1024 * 1024
    max_batch_size: int = 1000
    # Request bodies, counted as they arrive (413 past them). Unset: MAX_PAYLOAD_BYTES plus
    # 64 KiB for the rest of a task. Batch submissions and worker reports have their own.
    max_request_bytes: int | None = Field(default=None, ge=1024)
    max_batch_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Dependencies summed over the tasks of one batch.
    max_batch_dependencies: int = Field(default=10_000, ge=0)
    # A request body must have arrived this many seconds after its headers (408 otherwise).
    request_body_timeout: float = Field(default=30.0, gt=0)
    # The HTTP server's own bounds (app.main.main): request line plus headers, the time they
    # may take, idle keep-alive connections, and requests in progress (503 past it; unset: none).
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    header_timeout: float = Field(default=10.0, gt=0)
    keep_alive_timeout: int = Field(default=5, ge=1)
    limit_concurrency: int | None = Field(default=None, ge=1)
    # Requests per second per key (per client address without keys), by scope; 0 is no limit.
    # A key may send RATE_LIMIT_BURST seconds' worth at once. 429 with Retry-After past it.
    rate_limit_submit: float = Field(default=0.0, ge=0)
    rate_limit_read: float = Field(default=0.0, ge=0)
    rate_limit_operate: float = Field(default=0.0, ge=0)
    rate_limit_worker: float = Field(default=0.0, ge=0)
    rate_limit_burst: float = Field(default=1.0, gt=0)
    # Origins allowed to call the API from a browser (comma-separated); empty: CORS is off.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Reliability: leases are renewed by workers; the sweeper requeues expired ones.
    lease_seconds: float = Field(default=5.0, gt=0)
    # How often workers renew their leases; unset means a third of the lease, so that one lost
    # renewal never lets a lease lapse.
    lease_renew_interval: float | None = Field(default=None, gt=0)
    sweep_interval: float = Field(default=1.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    retry_backoff_base: float = Field(default=1.0, ge=0)
    retry_backoff_max: float = Field(default=300.0, ge=0)
    # Attempts a task may lose to vanished workers before it fails; they do not use up
    # max_retries (app/services/retry_policy.py has the rules).
    max_worker_losses: int = Field(default=5, ge=0)
    # Seconds of waiting worth one priority level; 0 keeps strict priority order.
    priority_aging_seconds: float = Field(default=0.0, ge=0)
    # A pending task whose type no live worker can run fails after waiting this many seconds
    # (unset: it waits for such a worker for ever).
    expire_unroutable_after: float | None = Field(default=None, gt=0)

    # Per-task logs (docs/architecture.md): what a handler may write per attempt, in bytes
    # (the rest is dropped, and a marker says how much; 0 captures nothing). A worker's default
    # for --task-log-max-bytes.
    task_log_max_bytes: int = Field(default=1024 * 1024, ge=0, le=256 * 1024 * 1024)
    # Finished tasks (with their attempts, events and logs) are deleted this many days after
    # they ended, by the leader; 0 keeps them for ever.
    retention_days: float = Field(default=0.0, ge=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()

    @property
    def async_database_url(self) -> str:
        return to_async_database_url(self.database_url)

    @property
    def request_bytes_limit(self) -> int:
        return self.max_request_bytes or self.max_payload_bytes + 64 * 1024

    @property
    def lease_renew_every(self) -> float:
        return self.lease_renew_interval or self.lease_seconds / 3

    @property
    def listen_host(self) -> str:
        """uvicorn's --host when this process is uvicorn's command line, else API_HOST."""
        found = uvicorn_host(sys.argv, os.environ)
        return self.api_host if found is None else found

    @property
    def listens_on_loopback(self) -> bool:
        return is_loopback(self.listen_host)

    @property
    def auth_enforced(self) -> bool:
        """Whether a request without a key is refused."""
        if self.auth_required is not None:
            return self.auth_required
        return not self.listens_on_loopback

    @property
    def worker_offline_after(self) -> float:
        """A worker that missed three heartbeats is considered gone."""
        return self.heartbeat_interval * 3


@lru_cache
def get_settings() -> Settings:
    return Settings()
