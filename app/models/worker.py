"""Worker schemas: registration, heartbeats, and the worker-facing claim and report messages."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.models.logs import MAX_SHIPPED_LINES, ShippedLine
from app.models.task import Name, TaskReport, TaskToRun

# Reports in one request. They are applied in one transaction, which holds SQLite's write lock
# while it runs: the cap bounds that time (a worker sends at most 500 at once).
MAX_REPORTS = 1000
# Text without control characters (NUL among them, which PostgreSQL cannot store).
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]*$"


class WorkerStatus(StrEnum):
    ACTIVE = "active"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    OFFLINE = "offline"


class SystemInfo(BaseModel):
    cpu_usage: float | None = Field(default=None, ge=0, le=100)
    memory_usage: float | None = Field(default=None, ge=0, le=100)
    disk_usage: float | None = Field(default=None, ge=0, le=100)


class WorkerRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker_id: Name
    capabilities: list[Name] = Field(min_length=1, max_length=1000)
    max_concurrent_tasks: StrictInt = Field(default=5, ge=1, le=10_000)
    hostname: str | None = Field(default=None, max_length=255, pattern=PRINTABLE_PATTERN)


class WorkerHeartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: WorkerStatus = WorkerStatus.ACTIVE
    current_tasks: list[Name] = Field(default_factory=list, max_length=10_000)
    system_info: SystemInfo = Field(default_factory=SystemInfo)


class WorkerPublic(BaseModel):
    worker_id: str
    status: WorkerStatus
    capabilities: list[str]
    max_concurrent_tasks: int
    current_tasks: list[str]
    system_info: dict[str, Any]
    hostname: str | None
    registered_at: datetime
    last_heartbeat: datetime


class WorkerList(BaseModel):
    workers: list[WorkerPublic]
    total: int


class RegisterResponse(BaseModel):
    worker: WorkerPublic
    redis_url: str
    redis_prefix: str
    lease_seconds: float
    lease_renew_interval: float
    heartbeat_interval: float
    retry_backoff_base: float
    retry_backoff_max: float
    max_worker_losses: int = 5


class StartRequest(BaseModel):
    """Task ids a worker claimed in Redis and now asks to start."""

    model_config = ConfigDict(extra="forbid")

    task_ids: list[Name] = Field(max_length=10_000)


class StartResponse(BaseModel):
    started: list[TaskToRun]
    refused: list[str]


class ReportBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reports: list[TaskReport] = Field(max_length=MAX_REPORTS)


class ReportResponse(BaseModel):
    accepted: list[str]
    refused: list[str]


class ExchangeRequest(BaseModel):
    """One round trip of the worker protocol: how attempts ended, and what was just claimed."""

    model_config = ConfigDict(extra="forbid")

    reports: list[TaskReport] = Field(default_factory=list, max_length=MAX_REPORTS)
    claims: list[Name] = Field(default_factory=list, max_length=10_000)
    # Lines the worker's handlers wrote (app/models/logs.py); stored apart from the reports.
    logs: list[ShippedLine] = Field(default_factory=list, max_length=MAX_SHIPPED_LINES)


class ExchangeResponse(BaseModel):
    """`started`: claims that became attempts (run them); `refused_claims`: drop them.
    `accepted`: reports recorded; `refused_reports`: their attempts were superseded."""

    started: list[TaskToRun] = Field(default_factory=list)
    refused_claims: list[str] = Field(default_factory=list)
    accepted: list[str] = Field(default_factory=list)
    refused_reports: list[str] = Field(default_factory=list)
