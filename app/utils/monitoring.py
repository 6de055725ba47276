"""Prometheus metrics of the scheduler.

With several API processes on one host (`python -m app.main --workers N`), each process writes
its metrics to files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode) and any
process's /metrics answers with the sum over all of them, so a scrape through the load balancer
is right whichever process answers. Without that variable, metrics are this process's own."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TASKS_SUBMITTED = Counter("dts_tasks_submitted_total", "Tasks accepted by the API", ["task_type"])
ATTEMPTS_ENDED = Counter("dts_attempts_ended_total", "Attempts that ended, by outcome", ["outcome"])
STALE_REPORTS = Counter(
    "dts_stale_reports_total", "Reports refused because the attempt was superseded"
)
LEASES_EXPIRED = Counter("dts_leases_expired_total", "Leases the sweeper found expired")
REDIS_REBUILDS = Counter(
    "dts_redis_rebuilds_total", "Times the Redis state was rebuilt from the database"
)
# Only the leader sets it; across processes the most recent value is the true one.
QUEUE_DEPTH = Gauge(
    "dts_queue_depth",
    "Ready tasks waiting in Redis",
    ["task_type"],
    multiprocess_mode="mostrecent",
)
WORKERS_LOST = Counter(
    "dts_workers_lost_total", "Workers marked offline because their heartbeats stopped"
)
# Set by the leader each sweep, like QUEUE_DEPTH.
WORKERS_ONLINE = Gauge("dts_workers_online", "Workers not offline", multiprocess_mode="mostrecent")
UNROUTABLE = Gauge(
    "dts_queue_unroutable",
    "Ready tasks of a type that no live worker can run",
    ["task_type"],
    multiprocess_mode="mostrecent",
)
HTTP_ERRORS = Counter(
    "dts_http_errors_total", "Answers with status 429 or 5xx, by status", ["status"]
)
QUEUE_WAIT = Histogram(
    "dts_queue_wait_seconds",
    "Time from submission to the start of an attempt",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


# Task types are user input: every new one would be a new time series in every scraper. Past this
# many distinct types, the rest are counted under "other".
MAX_TASK_TYPE_LABELS = 200
_task_type_labels: set[str] = set()


def task_type_label(task_type: str) -> str:
    if task_type in _task_type_labels:
        return task_type
    if len(_task_type_labels) < MAX_TASK_TYPE_LABELS:
        _task_type_labels.add(task_type)
        return task_type
    return "other"


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def scrape_registry() -> CollectorRegistry:
    """What /metrics exposes: the sum over every process of this host that writes to
    PROMETHEUS_MULTIPROC_DIR, or this process's own registry when it is unset."""
    if not os.environ.get(MULTIPROC_DIR):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class ErrorResponseCounter:
    """Counts the API's 429 and 5xx answers (HTTP_ERRORS), whichever layer gave them: the
    limits, the exception handlers or a route. Pure ASGI: one look at the status per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 500 or status == 429:
                    HTTP_ERRORS.labels(str(status)).inc()
            await send(message)

        await self.app(scope, receive, counted)
