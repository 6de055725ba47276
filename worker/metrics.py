"""Prometheus metrics of one worker process, served on `--metrics-port` (off by default).

The process's default registry is served, so a worker that runs its transitions itself
(`--database-url`) also exports the scheduler's own metrics for the attempts it records
(`dts_attempts_ended_total`, `dts_queue_wait_seconds`), which no API process sees then."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from app.utils.monitoring import task_type_label

TASKS_RUN = Counter(
    "dts_worker_tasks_total", "Attempts this worker ran, by task type and outcome",
    ["task_type", "outcome"],
)  # fmt: skip
TASK_SECONDS = Histogram(
    "dts_worker_task_seconds", "Run time of this worker's attempts, by task type", ["task_type"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
)  # fmt: skip
SLOTS = Gauge("dts_worker_slots", "Tasks this worker runs at once at most")
SLOTS_USED = Gauge("dts_worker_slots_used", "Tasks this worker runs now")
REPORTS_PENDING = Gauge("dts_worker_reports_pending", "Reports of ended attempts not yet accepted")


def observe(task_type: str, outcome: str, seconds: float) -> None:
    label = task_type_label(task_type)
    TASKS_RUN.labels(label, outcome).inc()
    TASK_SECONDS.labels(label).observe(seconds)


def serve(
    port: int, host: str, *, slots: int, used: Callable[[], int], pending: Callable[[], int]
) -> Any:
    """Start the metrics endpoint (a daemon thread); returns the server (tests shut it down)."""
    SLOTS.set(slots)
    SLOTS_USED.set_function(used)
    REPORTS_PENDING.set_function(pending)
    server, _thread = start_http_server(port, addr=host)
    return server
