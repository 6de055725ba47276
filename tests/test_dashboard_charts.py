"""The pure parts of the dashboard's charts, tables and time formatting: the scales and labels an
operator reads (issue 14), checked on the Vega-Lite spec each chart function returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from dashboard import charts
from dashboard.formatting import (
    OUTCOME_COLORS,
    STATUS_COLORS,
    clock,
    default_zone,
    in_zone,
    timestamp,
    zone_name,
)
from dashboard.tables import current_tasks, tasks_frame, workers_frame

NOW = datetime(2026, 12, 1, 21, 1, 30, tzinfo=UTC)


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is Paris (UTC+1 in December)."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def spec(chart: Any) -> dict[str, Any]:
    found: dict[str, Any] = chart.to_dict()
    return found


# --- time: one format, one zone -----------------------------------------------------------------


def test_one_time_format_in_utc_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHBOARD_TIMEZONE", raising=False)
    assert default_zone() == "UTC"
    assert timestamp("2026-12-01T21:01:30.123456+00:00", "UTC") == "2026-12-01 21:01:30 UTC"
    assert timestamp(NOW, "UTC", suffix=False) == "2026-12-01 21:01:30"
    assert timestamp(None, "UTC") == "—"
    assert clock("2026-12-01T21:01:30+00:00", "UTC") == "21:01:30"  # 24-hour, no am/pm


def test_local_time_is_a_setting(paris: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHBOARD_TIMEZONE", "local")
    assert default_zone() == "local"
    assert zone_name("local") == "CET"
    assert timestamp(NOW, "local") == "2026-12-01 22:01:30 CET"
    assert in_zone(NOW, "local") == datetime(2026, 12, 1, 22, 1, 30)  # naive: drawn as is
    assert in_zone(NOW, "UTC") == datetime(2026, 12, 1, 21, 1, 30)


def test_tables_show_times_in_the_chosen_zone_with_the_zone_in_the_header(paris: None) -> None:
    task = {
        "task_id": "t", "task_type": "echo", "status": "completed", "priority": 5,
        "worker_id": "w", "attempt": 1, "created_at": NOW.isoformat(), "queue_wait": 0.5,
        "run_time": 0.01, "error": None, "result_preview": None,
    }  # fmt: skip
    assert tasks_frame([task], "UTC")["Created"][0] == "2026-12-01 21:01:30"
    assert tasks_frame([task], "local")["Created"][0] == "2026-12-01 22:01:30"


# --- time series: one window, readable ticks ----------------------------------------------------


def _series(minutes: int, bucket_seconds: int, busy_from: int) -> dict[str, Any]:
    """A window ending now with work only in its last buckets (from index busy_from)."""
    count = minutes * 60 // bucket_seconds
    since = NOW - timedelta(seconds=count * bucket_seconds)
    buckets = []
    for i in range(count):
        busy = i >= busy_from
        buckets.append(
            {
                "start": (since + timedelta(seconds=i * bucket_seconds)).isoformat(),
                "completed": 30 if busy else 0,
                "failed": 3 if busy else 0,
                "error_rate": 0.1 if busy else None,
                "queue_wait_p50": 0.2 if busy else None,
                "queue_wait_p95": 0.9 if busy else None,
                "run_time_p50": 0.01 if busy else None,
                "run_time_p95": 0.05 if busy else None,
            }
        )
    return {"since": since.isoformat(), "until": NOW.isoformat(), "buckets": buckets}


@pytest.mark.parametrize(
    ("minutes", "bucket", "step"), [(15, 15, 2), (60, 60, 10), (1440, 1800, 180)]
)
def test_time_charts_share_the_whole_window_with_distinct_ticks(
    minutes: int, bucket: int, step: int
) -> None:
    series = _series(minutes, bucket, busy_from=minutes * 60 // bucket - 2)  # two busy buckets
    window = charts.TimeWindow.of(series, "UTC")
    assert window.tick_minutes() == step
    ticks = window.ticks()
    labels = [t.strftime("%H:%M") for t in ticks]
    assert len(set(labels)) == len(labels) >= 4  # never "21:01 21:01 21:01"
    made = [
        charts.throughput(series["buckets"], window, bucket),
        charts.latency(series["buckets"], window),
        charts.error_rate(series["buckets"], window),
    ]
    domains = [spec(c)["encoding"]["x"]["scale"]["domain"] for c in made]
    assert domains[0] == domains[1] == domains[2]  # latency does not start at the first task
    start = domains[0][0]
    since = datetime.fromisoformat(series["since"])
    assert (start["hours"], start["minutes"]) == (since.hour, since.minute)


def test_throughput_is_per_minute_in_status_colours() -> None:
    series = _series(60, 60, busy_from=58)
    chart = spec(charts.throughput(series["buckets"], charts.TimeWindow.of(series, "UTC"), 60))
    scale = chart["encoding"]["color"]["scale"]
    assert scale["range"] == [STATUS_COLORS["completed"], STATUS_COLORS["failed"]]
    assert chart["encoding"]["y"]["title"] == "tasks / min"
    values = next(iter(chart["datasets"].values()))
    assert max(v["value"] for v in values) == 30  # 30 in a one-minute bucket: 30/min


# --- bars, histograms, the attempts timeline ----------------------------------------------------


def test_a_single_bar_is_a_bar_with_its_count_and_no_clipped_axis_title() -> None:
    chart = spec(charts.bars({"5": 1}, category="priority", value="pending"))
    assert chart["height"] == {"step": charts.BAR_STEP}
    bar, label = chart["layer"]
    assert bar["encoding"]["y"]["title"] is None  # the heading names it: no "priorit"
    assert label["mark"]["type"] == "text"


def _samples(task_type: str, run_times: list[float]) -> list[dict[str, Any]]:
    return [
        {"task_type": task_type, "status": "completed", "run_time": r, "queue_wait": 0.1}
        for r in run_times
    ]


def test_each_type_gets_its_own_axis_in_its_own_unit() -> None:
    fast = spec(charts.run_time_histogram(_samples("echo", [0.002, 0.003, 0.004, 0.005])))
    slow = spec(charts.run_time_histogram(_samples("sleep", [30.0, 45.0, 60.0])))
    assert fast["encoding"]["x"]["title"] == "run time (ms)"
    assert slow["encoding"]["x"]["title"] == "run time (s)"
    fast_bins = next(iter(fast["datasets"].values()))
    assert len({b["from"] for b in fast_bins}) >= 3  # milliseconds are not one bar
    assert fast["encoding"]["color"]["scale"]["range"] == list(STATUS_COLORS.values())


def test_a_wide_spread_of_run_times_gets_a_log_axis() -> None:
    chart = spec(charts.run_time_histogram(_samples("mixed", [0.001, 0.01, 0.1, 1.0, 5.0])))
    assert chart["encoding"]["x"]["scale"]["type"] == "log"
    assert chart["encoding"]["x"]["title"] == "run time (s, log scale)"


def _attempt(n: int, start: float, end: float | None, outcome: str) -> dict[str, Any]:
    at = NOW - timedelta(minutes=5)
    return {
        "attempt": n,
        "worker_id": f"w{n}",
        "outcome": outcome,
        "started_at": (at + timedelta(seconds=start)).isoformat(),
        "ended_at": None if end is None else (at + timedelta(seconds=end)).isoformat(),
    }


def test_attempts_timeline_shows_a_millisecond_attempt_beside_minutes() -> None:
    attempts = [
        _attempt(1, 0, 0.012, "error"),
        _attempt(2, 30, 150, "timeout"),
        _attempt(3, 170, None, "running"),
    ]
    chart = spec(charts.attempts_timeline(attempts, NOW, "UTC"))
    rows = next(iter(chart["datasets"].values()))
    axis_end = chart["layer"][0]["encoding"]["x"]["scale"]["domain"][1]
    first = rows[0]
    assert first["end"] - first["start"] >= axis_end / 1.35 / 100  # at least 1% of the span
    assert [r["attempt"] for r in rows] == ["#1", "#2", "#3"]  # one row each: no overprint
    assert first["label"] == "12 ms · error · w1"
    assert rows[2]["label"].startswith("2 min 10 s · running")  # a running one ends now
    bars = chart["layer"][0]["encoding"]
    assert bars["color"]["scale"]["range"] == list(OUTCOME_COLORS.values())
    assert chart["layer"][0]["encoding"]["x"]["title"].startswith("min since attempt #1")


# --- workers ------------------------------------------------------------------------------------


def test_workers_rows_fit_and_show_current_tasks() -> None:
    assert current_tasks(["a", "b"]) == "a, b"
    assert current_tasks([f"t{i}" for i in range(7)]) == "t0, t1, t2 +4"
    worker = {
        "worker_id": "w1", "status": "active", "last_heartbeat": datetime.now(UTC).isoformat(),
        "capabilities": ["echo"], "current_tasks": ["t1"], "max_concurrent_tasks": 4,
        "system_info": {"cpu_usage": 50}, "hostname": "h",
    }  # fmt: skip
    frame = workers_frame([worker], offline_after=90)
    assert frame.loc[0, "Current tasks"] == "t1" and frame.loc[0, "Slots"] == "1 / 4"


def test_many_workers_draw_mean_and_busiest_not_a_tangle() -> None:
    at = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    history = pd.DataFrame(
        [
            {"time": at, "worker": f"w{i}", "resource": "CPU", "percent": float(i)}
            for i in range(charts.WORKER_LINES + 1)
        ]
    )
    chart = spec(charts.worker_resource(history, "CPU", "UTC"))
    rows = next(iter(chart["datasets"].values()))
    assert {r["worker"] for r in rows} == {"mean of workers", "busiest worker"}
    assert max(r["percent"] for r in rows) == charts.WORKER_LINES
