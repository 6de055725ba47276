"""Task history: tasks that completed or failed, with their times and results, and how long each
type takes (histograms of run time per type)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, tables, ui
from dashboard.formatting import duration

ANY = "any"
COLUMNS = ("ID", "Type", "Status", "Worker", "Attempt", "Created", "Queue wait", "Run time",
           "Result", "Error")  # fmt: skip
WINDOWS = {"1 h": 60, "6 h": 360, "24 h": 1440, "7 days": 7 * 1440}


def render() -> None:
    st.title("Task history")
    status_col, type_col, window_col = st.columns([2, 2, 2])
    statuses = status_col.multiselect(
        "Outcome",
        ["completed", "failed"],
        default=["completed", "failed"],
        key="history_status",
    )
    task_type = type_col.selectbox(
        "Type", [ANY, *ui.task_types()], key="history_type", accept_new_options=True
    )
    window = window_col.segmented_control(
        "Durations of the last", list(WINDOWS), default="1 h", key="history_window"
    )
    filters = {
        "status": statuses or ["completed", "failed"],
        "task_type": None if task_type == ANY else task_type,
        "limit": 50,
    }
    ui.live(lambda: _live(filters, WINDOWS[window or "1 h"]))


def _live(filters: dict[str, Any], minutes: int) -> None:
    _durations(minutes, filters["task_type"])
    st.subheader("Finished tasks")
    pager = ui.Pager("history_pages", tuple(sorted((k, str(v)) for k, v in filters.items())))
    page = ui.attempt(lambda: ui.client().task_page(**filters, cursor=pager.cursor), "list tasks")
    if page is None:
        return
    if page["tasks"]:
        st.dataframe(
            tables.styled_tasks(tables.tasks_frame(page["tasks"])),
            hide_index=True,
            column_order=COLUMNS,
            column_config=tables.TASK_COLUMNS,
        )
    else:
        st.info("No finished task matches these filters.")
    pager.controls(page["next_cursor"])
    ui.updated_caption()


def _durations(minutes: int, task_type: str | None) -> None:
    body = ui.attempt(lambda: ui.durations(minutes), "load the durations")
    if body is None:
        return
    samples = [s for s in body["samples"] if task_type in (None, s["task_type"])]
    by_type = [t for t in body["by_type"] if task_type in (None, t["task_type"])]
    st.subheader("Run time per type")
    if not samples:
        st.caption("No task ran to an end in this window.")
        return
    left, right = st.columns([3, 2])
    left.altair_chart(charts.duration_histograms(samples))
    right.dataframe(
        pd.DataFrame(
            [
                {
                    "type": t["task_type"],
                    "tasks": t["count"],
                    "run p50": duration(t["run_time_p50"]),
                    "run p95": duration(t["run_time_p95"]),
                    "wait p95": duration(t["queue_wait_p95"]),
                }
                for t in by_type
            ]
        ),
        hide_index=True,
    )
    right.caption(f"From the latest {len(body['samples'])} tasks that ran in the window.")


if __name__ == "__main__":
    render()
