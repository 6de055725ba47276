"""Overview: is the system healthy, is work flowing, and what needs attention now."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import charts, tables, ui
from dashboard.alerts import Alert, Snapshot, Thresholds, evaluate
from dashboard.api_client import ApiError, ApiUnavailable, NotSupported
from dashboard.charts import TimeWindow
from dashboard.formatting import duration, percent, rate
from dashboard.views.schedules import failing_lines

# Window label -> (minutes, bucket seconds): about 60 points per chart.
WINDOWS = {"15 min": (15, 15), "1 h": (60, 60), "6 h": (360, 360), "24 h": (1440, 1800)}
DEFAULT_WINDOW = "1 h"
RUNNING_SHOWN = 20
# "Now" is the last minute, in 5 s buckets: a rate that moves when work starts or stops, beside
# the window's average (which a burst of two minutes in an hour flattens to nothing).
NOW_MINUTES, NOW_BUCKET_SECONDS = 1, 5


def render() -> None:
    st.title("Overview")
    label = st.segmented_control(
        "Time window", list(WINDOWS), default=DEFAULT_WINDOW, key="overview_window"
    )
    minutes, bucket_seconds = WINDOWS[label or DEFAULT_WINDOW]
    ui.live(lambda: _live(minutes, bucket_seconds))


def _live(minutes: int, bucket_seconds: int) -> None:
    try:
        health = ui.client().health()
    except ApiUnavailable as exc:
        ui.unreachable(exc)
        return
    snapshot = Snapshot(
        health=health,
        overview=ui.attempt(ui.overview, "load the counts"),
        workers=ui.attempt(ui.workers, "load the workers") or [],
        timeseries=ui.attempt(lambda: ui.timeseries(minutes, bucket_seconds), "load the charts"),
    )
    _health_row(health)
    _alerts(evaluate(snapshot, Thresholds.from_env()))
    _failing_schedules()
    if snapshot.overview is not None:
        now = ui.attempt(lambda: ui.timeseries(NOW_MINUTES, NOW_BUCKET_SECONDS), "load the rates")
        _counts(snapshot.overview, snapshot.timeseries, now)
        _queue_charts(snapshot.overview)
    if snapshot.timeseries is not None:
        _time_charts(snapshot.timeseries)
    _running_tasks()
    ui.updated_caption()


def _badge(name: str, state: str) -> str:
    color = "green" if state == "ok" else "red"
    return f":{color}-badge[{name}: {'up' if state == 'ok' else state}]"


def _health_row(health: dict[str, Any]) -> None:
    st.markdown(
        " ".join(
            [
                _badge("API", "ok"),
                _badge("Database", health["database"]),
                _badge("Redis", health["redis"]),
            ]
        )
    )


def _alerts(alerts: list[Alert]) -> None:
    if not alerts:
        st.success(
            "No alerts: every store is up, every queued type has a live worker.",
            icon=":material/check_circle:",
        )
    for alert in alerts:
        show = st.error if alert.level == "error" else st.warning
        show(alert.message, icon=f":material/{alert.level}:")


def _failing_schedules() -> None:
    """A line per schedule whose recent runs fail (docs/schedules.md); nothing from an API
    without schedules."""
    try:
        found = ui.schedules()
    except NotSupported:
        return
    except ApiError as exc:
        ui.show_error(exc, "load the schedules")
        return
    for line in failing_lines(found):
        st.warning(line, icon=":material/event_busy:")


def _counts(
    overview: dict[str, Any], series: dict[str, Any] | None, now: dict[str, Any] | None
) -> None:
    workers, queue, by_status = overview["workers"], overview["queue"], overview["tasks_by_status"]
    totals = series["totals"] if series else {}
    last_minute = now["totals"] if now else {}
    cells = st.columns(6)
    cells[0].metric(
        "Live workers",
        workers["live"],
        help=f"{workers['offline']} offline, "
        f"{workers['silent']} silent; {workers['slots_used']}/{workers['slots_total']} slots busy",
    )
    cells[1].metric("Running", by_status["running"])
    cells[2].metric(
        "Pending", by_status["pending"], help="waiting for a worker, a dependency or their time"
    )
    cells[3].metric(
        "Ready in queue", sum(queue["ready_by_type"].values()) if queue["available"] else "—"
    )
    cells[4].metric(
        "Throughput now",
        rate(last_minute.get("throughput")),
        help="completed per second over the last minute",
    )
    cells[5].metric(
        "Error rate now",
        percent(last_minute.get("error_rate")),
        help="failed / (completed + failed) over the last minute",
    )
    wait, run = duration(totals.get("queue_wait_p95")), duration(totals.get("run_time_p95"))
    st.caption(
        f"Over the window: {totals.get('completed', 0)} completed, {totals.get('failed', 0)} "
        f"failed, {totals.get('submitted', 0)} submitted · throughput "
        f"{rate(totals.get('throughput'))} · error rate {percent(totals.get('error_rate'))} · "
        f"queue wait p95 {wait} · run time p95 {run}"
    )


def _queue_charts(overview: dict[str, Any]) -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Queue depth by type")
        queue = overview["queue"]
        if not queue["available"]:
            st.warning(f"Redis is unreachable ({queue['error']}): queue depth unknown.")
        elif not queue["ready_by_type"]:
            st.caption("No task is waiting for a worker.")
        else:
            st.altair_chart(charts.bars(queue["ready_by_type"], category="type", value="ready"))
        st.caption(
            f"{queue['delayed']} delayed (scheduled or backing off) · {queue['leased']} leased"
        )
    with right:
        st.subheader("Pending by priority")
        pending = {str(p["priority"]): p["pending"] for p in overview["pending_by_priority"]}
        if pending:
            st.altair_chart(charts.bars(pending, category="priority", value="pending"))
        else:
            st.caption("No pending task.")


def _time_charts(series: dict[str, Any]) -> None:
    """Three charts on one shared time axis: the whole window, however late the work began."""
    buckets, window = series["buckets"], TimeWindow.of(series, ui.zone())
    left, right = st.columns(2)
    with left:
        st.subheader("Throughput")
        st.altair_chart(charts.throughput(buckets, window, series["bucket_seconds"]))
    with right:
        st.subheader("Latency p50 / p95")
        st.altair_chart(charts.latency(buckets, window))
    st.subheader("Error rate")
    st.altair_chart(charts.error_rate(buckets, window))


def _running_tasks() -> None:
    st.subheader("Running tasks")
    page = ui.attempt(
        lambda: ui.client().task_page(status=["running"], limit=RUNNING_SHOWN), "list running tasks"
    )
    if page is None:
        return
    if not page["tasks"]:
        st.caption("Nothing is running.")
        return
    st.dataframe(
        tables.tasks_frame(page["tasks"], ui.zone()),
        hide_index=True,
        column_order=("ID", "Type", "Worker", "Attempt", "Created", "Queue wait"),
        column_config=tables.task_columns(ui.zone()),
    )


if __name__ == "__main__":
    render()
