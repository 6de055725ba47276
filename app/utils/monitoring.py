"""Prometheus metrics of the scheduler. Counters are per process; scrape every API process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS_SUBMITTED = Counter("dts_tasks_submitted_total", "Tasks accepted by the API", ["task_type"])
ATTEMPTS_ENDED = Counter("dts_attempts_ended_total", "Attempts that ended, by outcome", ["outcome"])
STALE_REPORTS = Counter(
    "dts_stale_reports_total", "Reports refused because the attempt was superseded"
)
LEASES_EXPIRED = Counter("dts_leases_expired_total", "Leases the sweeper found expired")
REDIS_REBUILDS = Counter(
    "dts_redis_rebuilds_total", "Times the Redis state was rebuilt from the database"
)
QUEUE_DEPTH = Gauge("dts_queue_depth", "Ready tasks waiting in Redis", ["task_type"])
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
