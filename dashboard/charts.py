"""Altair charts built from API answers. Pure: each function takes data, returns a chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import pandas as pd

from dashboard.formatting import STATUS_COLORS

HEIGHT = 220
TIME_AXIS = alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M"))


def _long(buckets: Sequence[dict[str, Any]], fields: Mapping[str, str]) -> pd.DataFrame:
    """One row per (bucket, field) with the field's display name: the shape Altair colours by."""
    rows = [
        {"time": pd.Timestamp(b["start"]), "series": label, "value": b[name]}
        for b in buckets
        for name, label in fields.items()
    ]
    return pd.DataFrame(rows, columns=["time", "series", "value"])


def _lines(frame: pd.DataFrame, y_title: str, *, y_format: str = "~s") -> alt.Chart:
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=TIME_AXIS,
            y=alt.Y("value:Q", title=y_title, axis=alt.Axis(format=y_format)),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "series:N", "value:Q"],
        )
        .properties(height=HEIGHT)
    )
    return chart


def throughput(buckets: Sequence[dict[str, Any]], bucket_seconds: int) -> alt.Chart:
    """Tasks per second that completed and that failed, per bucket."""
    frame = _long(buckets, {"completed": "completed", "failed": "failed"})
    frame["value"] = frame["value"] / bucket_seconds
    scale = alt.Scale(
        domain=["completed", "failed"], range=[STATUS_COLORS["completed"], STATUS_COLORS["failed"]]
    )
    return _lines(frame, "tasks / s", y_format="~g").encode(
        color=alt.Color("series:N", title=None, scale=scale, legend=alt.Legend(orient="bottom"))
    )


def latency(buckets: Sequence[dict[str, Any]]) -> alt.Chart:
    """p50/p95 of queue wait (submit -> start) and run time (start -> end), in seconds."""
    fields = {
        "queue_wait_p50": "wait p50",
        "queue_wait_p95": "wait p95",
        "run_time_p50": "run p50",
        "run_time_p95": "run p95",
    }
    return _lines(_long(buckets, fields).dropna(), "seconds", y_format="~g")


def error_rate(buckets: Sequence[dict[str, Any]]) -> alt.Chart:
    frame = _long(buckets, {"error_rate": "error rate"}).dropna()
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_area(line=True, opacity=0.3, color=STATUS_COLORS["failed"])
        .encode(
            x=TIME_AXIS,
            y=alt.Y(
                "value:Q",
                title="failed / ended",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            tooltip=[
                alt.Tooltip("time:T", format="%H:%M:%S"),
                alt.Tooltip("value:Q", format=".0%"),
            ],
        )
        .properties(height=HEIGHT)
    )
    return chart


def bars(counts: Mapping[str, int], *, category: str, value: str) -> alt.Chart:
    """A horizontal bar per category (queue depth by type, pending by priority)."""
    frame = pd.DataFrame({category: list(counts), value: list(counts.values())})
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y(f"{category}:N", sort=None, title=category),
            x=alt.X(f"{value}:Q", title=value, axis=alt.Axis(format="d", tickMinStep=1)),
            tooltip=[f"{category}:N", f"{value}:Q"],
        )
        # The height includes the axes ("fit" autosizing): leave room for each bar.
        .properties(height=60 + 28 * len(frame))
    )
    return chart


def duration_histograms(samples: Sequence[dict[str, Any]]) -> alt.FacetChart:
    """Run times binned, one histogram per task type, each with its own time scale."""
    frame = pd.DataFrame(samples, columns=["task_type", "status", "run_time", "queue_wait"])
    scale = alt.Scale(domain=list(STATUS_COLORS), range=list(STATUS_COLORS.values()))
    chart: alt.FacetChart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("run_time:Q", bin=alt.Bin(maxbins=30), title="run time (s)"),
            y=alt.Y("count():Q", title="tasks"),
            color=alt.Color("status:N", scale=scale, legend=alt.Legend(orient="bottom")),
            tooltip=["task_type:N", "status:N", "count():Q"],
        )
        .properties(height=120, width=520)
        .facet(row=alt.Row("task_type:N", title=None))
        .resolve_scale(x="independent", y="independent")
    )
    return chart


def attempts_timeline(attempts: Sequence[dict[str, Any]], now: pd.Timestamp) -> alt.Chart:
    """One bar per attempt from start to end (to now while it runs), coloured by outcome."""
    rows = [
        {
            "attempt": f"#{a['attempt']}",
            "worker": a.get("worker_id") or "—",
            "outcome": a["outcome"],
            "start": pd.Timestamp(a["started_at"]),
            "end": pd.Timestamp(a["ended_at"]) if a.get("ended_at") else now,
        }
        for a in attempts
        if a.get("started_at")
    ]
    frame = pd.DataFrame(rows, columns=["attempt", "worker", "outcome", "start", "end"])
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_bar(size=14)
        .encode(
            x=alt.X("start:T", title=None),
            x2="end:T",
            y=alt.Y("attempt:N", sort=None, title=None),
            color=alt.Color("outcome:N", legend=alt.Legend(orient="bottom")),
            tooltip=["attempt:N", "worker:N", "outcome:N", "start:T", "end:T"],
        )
        .properties(height=40 + 28 * len(frame))
    )
    return chart


def worker_resources(history: pd.DataFrame) -> alt.FacetChart:
    """CPU, memory and disk use over time, a line per worker, one panel per resource."""
    chart: alt.FacetChart = (
        alt.Chart(history)
        .mark_line(point=alt.OverlayMarkDef(size=14))
        .encode(
            x=alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M:%S")),
            y=alt.Y("percent:Q", title="%", scale=alt.Scale(domain=[0, 100])),
            color=alt.Color("worker:N", legend=alt.Legend(orient="bottom")),
            tooltip=[
                "worker:N",
                "resource:N",
                "percent:Q",
                alt.Tooltip("time:T", format="%H:%M:%S"),
            ],
        )
        .properties(height=140, width=280)
        .facet(column=alt.Column("resource:N", title=None))
    )
    return chart
