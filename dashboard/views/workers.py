"""Workers: status, capabilities, slots, resource use and heartbeat age of every worker, with the
lost and offline ones marked. The API keeps only each worker's latest heartbeat, so the resource
history is gathered by this page while it is open."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, tables, ui
from dashboard.formatting import parse_time

RESOURCES = {"cpu_usage": "CPU", "memory_usage": "memory", "disk_usage": "disk"}
HISTORY_ROWS = 3000  # about 15 minutes of 5 workers beating every second
DEFAULT_OFFLINE_AFTER = 90.0  # three of the default 30 s heartbeats


def remember_heartbeats(history: list[dict[str, Any]], workers: list[dict[str, Any]]) -> None:
    """Append one row per resource for each heartbeat not seen yet (keyed by its time)."""
    seen = {(row["worker"], row["time"]) for row in history}
    for worker in workers:
        beat = parse_time(worker["last_heartbeat"])
        if (worker["worker_id"], beat) in seen or worker["status"] == "offline":
            continue
        info = worker.get("system_info") or {}
        history.extend(
            {"time": beat, "worker": worker["worker_id"], "resource": label, "percent": info[key]}
            for key, label in RESOURCES.items()
            if info.get(key) is not None
        )
    del history[:-HISTORY_ROWS]


def render() -> None:
    st.title("Workers")
    ui.live(_live)


def _live() -> None:
    workers = ui.attempt(ui.workers, "list the workers")
    if workers is None:
        return
    overview = ui.attempt(ui.overview, "load the worker summary")
    offline_after = overview["workers"]["offline_after"] if overview else DEFAULT_OFFLINE_AFTER
    if not workers:
        st.info("No worker has registered yet. Start one: `python worker/worker_node.py`.")
        return
    frame = tables.workers_frame(workers, offline_after)
    live = frame[~frame["State"].str.contains("OFFLINE|LOST")]
    cells = st.columns(3)
    cells[0].metric("Live", len(live))
    cells[1].metric("Lost or offline", len(frame) - len(live))
    cells[2].metric("Slots busy", f"{sum(len(w['current_tasks']) for w in workers)}")
    st.dataframe(
        tables.styled_workers(frame),
        hide_index=True,
        column_order=tables.WORKER_ORDER,
        column_config=tables.WORKER_COLUMNS,
    )
    st.caption(f"A worker is lost after {offline_after:.0f} s without a heartbeat.")
    with st.expander("Hosts and capabilities"):
        st.dataframe(frame, hide_index=True, column_order=tables.WORKER_DETAIL_ORDER)
    _resource_history(workers)
    ui.updated_caption()


def _resource_history(workers: list[dict[str, Any]]) -> None:
    history: list[dict[str, Any]] = st.session_state.setdefault("worker_history", [])
    remember_heartbeats(history, workers)
    st.subheader("CPU, memory and disk over time")
    if not history:
        st.caption("No worker has reported its resource use yet.")
        return
    frame = pd.DataFrame(history)
    for cell, resource in zip(st.columns(len(RESOURCES)), RESOURCES.values(), strict=True):
        cell.altair_chart(charts.worker_resource(frame, resource, ui.zone()))
    beats = frame.groupby("worker")["time"].nunique().min()
    more = " Each line grows a point per heartbeat." if beats < 2 else ""
    st.caption(f"Gathered from heartbeats while this page is open.{more}")


if __name__ == "__main__":
    render()
