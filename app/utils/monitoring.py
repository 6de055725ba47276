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
