"""All configuration, read once from the environment and `.env` (names follow the seed)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # API (seed names)
    api_host: str = "0.0.0.0"
    api_port: int = 8000
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

    # Limits on what the API accepts
    max_payload_bytes: int = 1024 * 1024
    max_batch_size: int = 1000

    # Reliability: leases are renewed by workers; the sweeper requeues expired ones.
    lease_seconds: float = Field(default=5.0, gt=0)
    # How often workers renew their leases; unset means a third of the lease, so that one lost
    # renewal never lets a lease lapse.
    lease_renew_interval: float | None = Field(default=None, gt=0)
    sweep_interval: float = Field(default=1.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    retry_backoff_base: float = Field(default=1.0, ge=0)
    retry_backoff_max: float = Field(default=300.0, ge=0)
    # Seconds of waiting worth one priority level; 0 keeps strict priority order.
    priority_aging_seconds: float = Field(default=0.0, ge=0)
    # A pending task whose type no live worker can run fails after waiting this many seconds
    # (unset: it waits for such a worker for ever).
    expire_unroutable_after: float | None = Field(default=None, gt=0)

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        return value.upper()

    @property
    def async_database_url(self) -> str:
        return to_async_database_url(self.database_url)

    @property
    def lease_renew_every(self) -> float:
        return self.lease_renew_interval or self.lease_seconds / 3

    @property
    def worker_offline_after(self) -> float:
        """A worker that missed three heartbeats is considered gone."""
        return self.heartbeat_interval * 3


@lru_cache
def get_settings() -> Settings:
    return Settings()
