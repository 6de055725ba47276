"""Python client for the distributed task scheduler's API: `Client` (blocking) and `AsyncClient`
(asyncio), with typed errors and a batching producer. docs/client.md is the guide."""

from __future__ import annotations

# The API's own models: a change in the API is a change in the client (docs/client.md).
from app.models.auth import KeyCreated, KeyPublic, Scope
from app.models.logs import LogLine, TaskLogs
from app.models.task import TaskCreate, TaskGraph, TaskPublic, TaskStatus
from app.models.worker import WorkerPublic
from dts_client.aio import AsyncClient
from dts_client.client import Client
from dts_client.config import __version__
from dts_client.errors import (
    ApiError,
    Conflict,
    DtsError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    TaskFailed,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from dts_client.retry import RetryPolicy

Task = TaskPublic

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "DtsError",
    "Forbidden",
    "Invalid",
    "KeyCreated",
    "KeyPublic",
    "LogLine",
    "NotFound",
    "RateLimited",
    "RetryPolicy",
    "Scope",
    "Task",
    "TaskCreate",
    "TaskFailed",
    "TaskGraph",
    "TaskLogs",
    "TaskPublic",
    "TaskStatus",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WorkerPublic",
    "__version__",
]
