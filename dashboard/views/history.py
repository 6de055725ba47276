"""Task history: tasks that completed or failed, with their times and results, and how long each
type takes (histograms of run time per type)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, tables, ui
from dashboard.formatting import STATUS_COLORS, duration

ANY = "any"
COLUMNS = ("ID", "Type", "Status", "Worker", "Attempt", "Created", "Queue wait", "Run time",
           "Result", "Error")  # fmt: skip
HISTOGRAMS_PER_ROW = 3
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
            tables.styled_tasks(tables.tasks_frame(page["tasks"], ui.zone())),
            hide_index=True,
            column_order=COLUMNS,
            column_config=tables.task_columns(ui.zone()),
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
    st.dataframe(
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
    st.caption(
        f"From the latest {len(body['samples'])} tasks that ran in the window. Each type has its "
        "own axis (logarithmic when its run times spread widely)."
    )
    ui.color_legend({s: STATUS_COLORS[s] for s in ("completed", "failed")})
    _histograms(samples)


def _histograms(samples: list[dict[str, Any]]) -> None:
    """A histogram per type, HISTOGRAMS_PER_ROW to a row."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        by_type.setdefault(sample["task_type"], []).append(sample)
    types = sorted(by_type)
    for row in range(0, len(types), HISTOGRAMS_PER_ROW):
        cells = st.columns(HISTOGRAMS_PER_ROW)
        for cell, task_type in zip(cells, types[row : row + HISTOGRAMS_PER_ROW], strict=False):
            cell.markdown(f"**{task_type}** ({len(by_type[task_type])})")
            cell.altair_chart(charts.run_time_histogram(by_type[task_type]))


if __name__ == "__main__":
    render()
