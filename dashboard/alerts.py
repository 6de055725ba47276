"""Alerts in plain words, from what the API reports. Pure: no Streamlit, no I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dashboard.formatting import duration, seconds_since

# An offline worker is news for this long; after that it is history, not an alert.
RECENTLY_OFFLINE_SECONDS = 3600.0
# The error rate is judged over the last few minutes, and only once enough tasks ended there:
# one failure out of two is not a trend.
ERROR_RATE_WINDOW_SECONDS = 300.0
ERROR_RATE_MIN_TASKS = 5


@dataclass(frozen=True)
class Thresholds:
    error_rate: float = 0.2
    queue_depth: int = 1000

    @classmethod
    def from_env(cls) -> Thresholds:
        return cls(
            error_rate=float(os.environ.get("DASHBOARD_ERROR_RATE_ALERT", cls.error_rate)),
            queue_depth=int(os.environ.get("DASHBOARD_QUEUE_DEPTH_ALERT", cls.queue_depth)),
        )


@dataclass(frozen=True)
class Alert:
    level: Literal["error", "warning"]
    message: str


@dataclass
class Snapshot:
    """What the overview page fetched; a part the API could not give is None."""

    health: dict[str, Any] | None
    overview: dict[str, Any] | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)
    timeseries: dict[str, Any] | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def evaluate(snapshot: Snapshot, thresholds: Thresholds) -> list[Alert]:
    """Every alert that holds now, the most severe first."""
    alerts = [
        *_store_alerts(snapshot.health),
        *_unserved_types(snapshot.overview),
        *_worker_alerts(snapshot),
        *_error_rate(snapshot.timeseries, thresholds, snapshot.now),
        *_queue_depth(snapshot.overview, thresholds),
    ]
    return sorted(alerts, key=lambda a: a.level != "error")


def _store_alerts(health: dict[str, Any] | None) -> list[Alert]:
    if health is None:
        return []
    alerts = []
    if health.get("database") != "ok":
        alerts.append(
            Alert(
                "error",
                f"The database is down ({health.get('database')}): "
                "tasks can be neither submitted nor updated.",
            )
        )
    if health.get("redis") != "ok":
        alerts.append(
            Alert(
                "error",
                f"Redis is down ({health.get('redis')}): workers cannot "
                "claim tasks; submitted tasks wait until it is back.",
            )
        )
    return alerts


def _waiting_by_type(overview: dict[str, Any]) -> dict[str, int]:
    """Ready tasks per type from Redis; the database's pending counts when Redis is down."""
    queue = overview["queue"]
    if queue["available"]:
        return {t: n for t, n in queue["ready_by_type"].items() if n}
    return {c["task_type"]: c["pending"] for c in overview["tasks_by_type"] if c["pending"]}


def _unserved_types(overview: dict[str, Any] | None) -> list[Alert]:
    if overview is None:
        return []
    served = set(overview["workers"]["live_capabilities"])
    return [
        Alert(
            "error",
            f"{n} '{task_type}' task(s) are waiting but no live worker runs "
            f"'{task_type}': start one with that capability.",
        )
        for task_type, n in sorted(_waiting_by_type(overview).items())
        if task_type not in served
    ]


def _worker_alerts(snapshot: Snapshot) -> list[Alert]:
    if snapshot.overview is None:
        return []
    offline_after = snapshot.overview["workers"]["offline_after"]
    alerts = []
    for worker in snapshot.workers:
        age = seconds_since(worker["last_heartbeat"], snapshot.now) or 0.0
        name = worker["worker_id"]
        if worker["status"] == "offline" and age <= RECENTLY_OFFLINE_SECONDS:
            alerts.append(
                Alert(
                    "warning", f"Worker '{name}' is offline (last heartbeat {duration(age)} ago)."
                )
            )
        elif worker["status"] != "offline" and age > offline_after:
            alerts.append(
                Alert(
                    "error",
                    f"Worker '{name}' has sent no heartbeat for "
                    f"{duration(age)}: it is probably lost; its tasks go "
                    "back to the queue when their leases expire.",
                )
            )
    return alerts


def _recent_buckets(series: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    step = series["bucket_seconds"]
    return [
        b
        for b in series["buckets"]
        if (seconds_since(b["start"], now) or 0.0) <= ERROR_RATE_WINDOW_SECONDS + step
    ]


def _error_rate(
    series: dict[str, Any] | None, thresholds: Thresholds, now: datetime
) -> list[Alert]:
    if series is None:
        return []
    recent = _recent_buckets(series, now)
    failed = sum(b["failed"] for b in recent)
    ended = failed + sum(b["completed"] for b in recent)
    if ended < ERROR_RATE_MIN_TASKS or failed / ended <= thresholds.error_rate:
        return []
    return [
        Alert(
            "warning",
            f"Error rate {failed / ended:.0%} over the last "
            f"{ERROR_RATE_WINDOW_SECONDS / 60:.0f} minutes ({failed} of {ended} "
            f"tasks failed), above the {thresholds.error_rate:.0%} threshold.",
        )
    ]


def _queue_depth(overview: dict[str, Any] | None, thresholds: Thresholds) -> list[Alert]:
    if overview is None:
        return []
    depth = sum(_waiting_by_type(overview).values())
    if depth <= thresholds.queue_depth:
        return []
    return [
        Alert(
            "warning",
            f"{depth:,} tasks are waiting in the queue, above the "
            f"{thresholds.queue_depth:,} threshold: add workers or capacity.",
        )
    ]
