"""Altair charts built from API answers. Pure: each function takes data, returns a chart.

Times reach Vega-Lite as wall-clock times in the chosen zone without a zone of their own: Vega
draws such a time as it is, where an aware one would be redrawn in the browser's zone."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from dashboard.formatting import (
    OUTCOME_COLORS,
    STATUS_COLORS,
    Zone,
    clock,
    duration,
    in_zone,
    parse_time,
    zone_name,
)

HEIGHT = 180
BAR_STEP = 30  # pixels per bar of a bar chart: one bar is a bar, not a hairline
HISTOGRAM_BINS = 20
# A histogram whose slowest task took this many times the fastest one gets a log axis: one
# linear axis would put every fast task in the first bar.
LOG_SPREAD = 20.0
# Beyond this many workers a line each is a tangle: the resource chart draws mean and max.
WORKER_LINES = 8
# Tick spacings (minutes) a time axis may use: about eight ticks over any window, never two
# ticks that print the same "%H:%M".
TICK_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720)
TICKS_PER_AXIS = 8


# The width fits the page's column; the height is the plotting area's, as set below. Streamlit's
# default ("fit" both ways) counts the axes and legend inside the height and squeezed the plot of
# a small chart to a few pixels.
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")


def _scale_for(outcomes: Mapping[str, str]) -> alt.Scale:
    return alt.Scale(domain=list(outcomes), range=list(outcomes.values()))


STATUS_SCALE = _scale_for(STATUS_COLORS)


def _vega_time(moment: datetime) -> alt.DateTime:
    return alt.DateTime(
        year=moment.year,
        month=moment.month,
        date=moment.day,
        hours=moment.hour,
        minutes=moment.minute,
        seconds=moment.second,
    )


@dataclass(frozen=True)
class TimeWindow:
    """The span every time series of a page shares, so their x axes line up."""

    since: datetime
    until: datetime
    zone: Zone

    @classmethod
    def of(cls, series: Mapping[str, Any], zone: Zone) -> TimeWindow:
        since, until = parse_time(series["since"]), parse_time(series["until"])
        assert since is not None and until is not None  # the API always sends both
        return cls(since, until, zone)

    def tick_minutes(self) -> int:
        minutes = (self.until - self.since).total_seconds() / 60
        return next((m for m in TICK_MINUTES if m * TICKS_PER_AXIS >= minutes), TICK_MINUTES[-1])

    def ticks(self) -> list[datetime]:
        """Wall-clock times on whole multiples of the tick spacing. Listed here, not asked of
        Vega as a tick interval: Vega-Lite's schema spells the unit "minute", which this Vega
        version does not know, and the chart then draws nothing."""
        step = timedelta(minutes=self.tick_minutes())
        first, last = in_zone(self.since, self.zone), in_zone(self.until, self.zone)
        midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
        tick = midnight + step * math.ceil((first - midnight) / step)
        found = []
        while tick <= last:
            found.append(tick)
            tick += step
        return found

    def x(self, field: str = "time") -> alt.X:
        domain = [_vega_time(in_zone(m, self.zone)) for m in (self.since, self.until)]
        return alt.X(
            f"{field}:T",
            title=zone_name(self.zone),
            scale=alt.Scale(domain=domain),
            axis=alt.Axis(format="%H:%M", values=[_vega_time(t) for t in self.ticks()]),
        )


def _long(buckets: Sequence[dict[str, Any]], fields: Mapping[str, str], zone: Zone) -> pd.DataFrame:
    """One row per (bucket, field) with the field's display name: the shape Altair colours by."""
    rows = []
    for b in buckets:
        start = parse_time(b["start"])
        assert start is not None
        rows += [
            {"time": in_zone(start, zone), "series": label, "value": b[name]}
            for name, label in fields.items()
        ]
    return pd.DataFrame(rows, columns=["time", "series", "value"])


def _tooltip_time(title: str = "bucket from") -> alt.Tooltip:
    return alt.Tooltip("time:T", title=title, format="%Y-%m-%d %H:%M:%S")


def _lines(
    frame: pd.DataFrame, window: TimeWindow, y: alt.Y, colors: alt.Scale | None
) -> alt.Chart:
    color = alt.Color("series:N", title=None, legend=alt.Legend(orient="top"))
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=window.x(),
            y=y,
            color=color if colors is None else color.scale(colors),
            tooltip=[_tooltip_time(), "series:N", alt.Tooltip("value:Q", format=".3~g")],
        )
        .properties(height=HEIGHT, autosize=FIT_WIDTH)
    )
    return chart


def throughput(
    buckets: Sequence[dict[str, Any]], window: TimeWindow, bucket_seconds: int
) -> alt.Chart:
    """Tasks per minute that completed and that failed, per bucket, over the whole window."""
    frame = _long(buckets, {"completed": "completed", "failed": "failed"}, window.zone)
    frame["value"] = frame["value"] * 60 / bucket_seconds
    scale = _scale_for({s: STATUS_COLORS[s] for s in ("completed", "failed")})
    y = alt.Y("value:Q", title="tasks / min", axis=alt.Axis(format="~r"))
    return _lines(frame, window, y, scale)


def latency(buckets: Sequence[dict[str, Any]], window: TimeWindow) -> alt.Chart:
    """p50/p95 of queue wait (submit -> start) and run time (start -> end), in seconds. Buckets
    where nothing ended have no point; the axis still spans the window."""
    fields = {
        "queue_wait_p50": "wait p50",
        "queue_wait_p95": "wait p95",
        "run_time_p50": "run p50",
        "run_time_p95": "run p95",
    }
    y = alt.Y("value:Q", title="seconds", axis=alt.Axis(format="~g"))
    return _lines(_long(buckets, fields, window.zone).dropna(), window, y, None)


def error_rate(buckets: Sequence[dict[str, Any]], window: TimeWindow) -> alt.Chart:
    frame = _long(buckets, {"error_rate": "error rate"}, window.zone).dropna()
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_line(
            point=alt.OverlayMarkDef(size=18, color=STATUS_COLORS["failed"]),
            color=STATUS_COLORS["failed"],
        )
        .encode(
            x=window.x(),
            y=alt.Y(
                "value:Q",
                title="failed / ended",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            tooltip=[_tooltip_time(), alt.Tooltip("value:Q", title="error rate", format=".0%")],
        )
        .properties(height=HEIGHT * 2 // 3, autosize=FIT_WIDTH)
    )
    return chart


def bars(counts: Mapping[str, int], *, category: str, value: str) -> alt.LayerChart:
    """A horizontal bar per category (queue depth by type, pending by priority), its count
    printed beside it. The category is named by the chart's heading, not an axis title."""
    frame = pd.DataFrame({category: list(counts), value: list(counts.values())})
    top = max(1, int(frame[value].max())) if len(frame) else 1
    base = alt.Chart(frame).encode(
        y=alt.Y(f"{category}:N", sort=None, title=None, axis=alt.Axis(labelLimit=160)),
        x=alt.X(
            f"{value}:Q",
            title=value,
            # Room on the right for the longest bar's count.
            scale=alt.Scale(domain=[0, top * 1.15]),
            axis=alt.Axis(format="d", tickMinStep=1),
        ),
        tooltip=[f"{category}:N", f"{value}:Q"],
    )
    chart: alt.LayerChart = (
        base.mark_bar(size=BAR_STEP - 8)
        + base.mark_text(align="left", dx=4).encode(text=f"{value}:Q")
    ).properties(height=alt.Step(BAR_STEP), autosize=FIT_WIDTH)
    return chart


def _unit(largest: float) -> tuple[str, float]:
    """The unit a duration axis reads best in, and the factor from seconds to it."""
    if largest < 1:
        return "ms", 1000.0
    if largest < 120:
        return "s", 1.0
    if largest < 7200:
        return "min", 1 / 60
    return "h", 1 / 3600


def _edges(values: pd.Series, *, log: bool) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:  # every task took the same time: one bar around it
        pad = abs(low) * 0.1 or 1.0
        return np.array([low - pad, high + pad])
    if log:
        return np.geomspace(low, high, HISTOGRAM_BINS + 1)
    return np.linspace(low, high, HISTOGRAM_BINS + 1)


def run_time_histogram(samples: Sequence[dict[str, Any]]) -> alt.Chart:
    """Run times of one task type binned on their own axis: linear, or logarithmic when they
    span more than LOG_SPREAD times; in ms, s, min or h as suits them; stacked by outcome."""
    frame = pd.DataFrame(samples, columns=["task_type", "status", "run_time", "queue_wait"])
    unit, factor = _unit(float(frame["run_time"].max()))
    values = frame["run_time"] * factor
    positive = values[values > 0]
    log = len(positive) == len(values) and values.max() / max(positive.min(), 1e-9) > LOG_SPREAD
    edges = _edges(values, log=log)
    frame["bin"] = pd.cut(values, edges, include_lowest=True, labels=False)
    counts = frame.groupby(["bin", "status"], observed=True).size().reset_index(name="tasks")
    counts["from"] = edges[counts["bin"].astype(int)]
    counts["to"] = edges[counts["bin"].astype(int) + 1]
    scale = alt.Scale(type="log", domain=[edges[0], edges[-1]]) if log else alt.Scale(zero=False)
    axis_title = f"run time ({unit}{', log scale' if log else ''})"
    chart: alt.Chart = (
        alt.Chart(counts)
        .mark_bar()
        .encode(
            x=alt.X("from:Q", title=axis_title, scale=scale, axis=alt.Axis(format="~r")),
            x2="to:Q",
            y=alt.Y("sum(tasks):Q", title="tasks", axis=alt.Axis(tickMinStep=1, format="d")),
            color=alt.Color("status:N", scale=STATUS_SCALE, legend=None),
            tooltip=[
                "status:N",
                alt.Tooltip("from:Q", title=f"from ({unit})", format=".3~g"),
                alt.Tooltip("to:Q", title=f"to ({unit})", format=".3~g"),
                "tasks:Q",
            ],
        )
        .properties(height=110, autosize=FIT_WIDTH)
    )
    return chart


def attempts_timeline(
    attempts: Sequence[dict[str, Any]], now: datetime, zone: Zone
) -> alt.LayerChart:
    """A Gantt chart of the attempts: a bar each from its start to its end (to now while it
    runs), on an axis of time since the first start, coloured by outcome, with its duration and
    outcome written beside it. A bar is never narrower than 1% of the axis, so an attempt of a
    few milliseconds still shows beside one of minutes."""
    started = [a for a in attempts if a.get("started_at")]
    first = min((parse_time(a["started_at"]) or now) for a in started)
    spans = [
        (
            (parse_time(a["started_at"]) or now) - first,
            (parse_time(a.get("ended_at")) or now) - first,
        )
        for a in started
    ]
    total = max(end.total_seconds() for _, end in spans) or 0.001
    unit, factor = _unit(total)
    shortest = total * factor / 100
    rows = [
        {
            "attempt": f"#{a['attempt']}",
            "worker": a.get("worker_id") or "—",
            "outcome": a["outcome"],
            "start": start.total_seconds() * factor,
            "end": max(end.total_seconds() * factor, start.total_seconds() * factor + shortest),
            "label": " · ".join(
                [duration((end - start).total_seconds()), a["outcome"], a.get("worker_id") or "—"]
            ),
            "started": clock(a["started_at"], zone),
        }
        for a, (start, end) in zip(started, spans, strict=True)
    ]
    frame = pd.DataFrame(rows)
    base = alt.Chart(frame).encode(
        y=alt.Y("attempt:N", sort=None, title=None),
        x=alt.X(
            "start:Q",
            title=f"{unit} since attempt {rows[0]['attempt']} started ({clock(first, zone)} "
            f"{zone_name(zone)})",
            # Room on the right for the last bar's label.
            scale=alt.Scale(domain=[0, total * factor * 1.35], nice=False),
            axis=alt.Axis(format="~g"),
        ),
        tooltip=["attempt:N", "worker:N", "outcome:N", "started:N", "label:N"],
    )
    bars = base.mark_bar(size=BAR_STEP - 10).encode(
        x2="end:Q",
        color=alt.Color("outcome:N", scale=_scale_for(OUTCOME_COLORS), legend=None),
    )
    labels = base.mark_text(align="left", dx=4).encode(x="end:Q", text="label:N")
    chart: alt.LayerChart = (bars + labels).properties(
        height=alt.Step(BAR_STEP), autosize=FIT_WIDTH
    )
    return chart


def worker_resource(history: pd.DataFrame, resource: str, zone: Zone) -> alt.Chart:
    """One resource (CPU, memory or disk) over the gathered time: a line per worker, or the mean
    and the max over workers when a line each would be a tangle."""
    frame = history[history["resource"] == resource].copy()
    frame["time"] = [in_zone(t, zone) for t in frame["time"]]
    if frame["worker"].nunique() > WORKER_LINES:
        frame["time"] = frame["time"].dt.floor("10s")
        grouped = frame.groupby("time")["percent"]
        frame = pd.concat(
            [grouped.mean().reset_index().assign(worker="mean of workers"),
             grouped.max().reset_index().assign(worker="busiest worker")]
        )  # fmt: skip
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=24))
        .encode(
            x=alt.X(
                "time:T",
                title=zone_name(zone),
                axis=alt.Axis(format="%H:%M:%S", labelOverlap=True, tickCount=4),
            ),
            y=alt.Y("percent:Q", title=f"{resource} %", scale=alt.Scale(domain=[0, 100])),
            color=alt.Color("worker:N", title=None, legend=alt.Legend(orient="top", columns=2)),
            tooltip=["worker:N", alt.Tooltip("percent:Q", format=".0f"), _tooltip_time("at")],
        )
        .properties(height=140, autosize=FIT_WIDTH)
    )
    return chart
