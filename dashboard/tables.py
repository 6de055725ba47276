"""DataFrames for st.dataframe, built from API answers, and their column settings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from dashboard.formatting import STATUS_COLORS, Zone, duration, seconds_since, timestamp, zone_name

TASK_FIELDS = [
    "ID", "Type", "Status", "Priority", "Worker", "Attempt", "Created", "Queue wait", "Run time",
    "Error", "Result",
]  # fmt: skip
CURRENT_TASKS_SHOWN = 3  # ids in a worker's row; the rest as "+N"


def task_columns(zone: Zone) -> dict[str, Any]:
    """The header names the zone once, so the cells hold just the time (the one format)."""
    return {
        "ID": st.column_config.TextColumn("ID", pinned=True),
        "Created": st.column_config.TextColumn(f"Created ({zone_name(zone)})"),
    }


def tasks_frame(tasks: Sequence[dict[str, Any]], zone: Zone) -> pd.DataFrame:
    """Task summaries (GET /api/stats/tasks) as rows a person scans."""
    rows = [
        {
            "ID": t["task_id"],
            "Type": t["task_type"],
            "Status": t["status"],
            "Priority": t["priority"],
            "Worker": t["worker_id"] or "",
            "Attempt": t["attempt"],
            "Created": timestamp(t["created_at"], zone, suffix=False),
            "Queue wait": duration(t["queue_wait"]),
            "Run time": duration(t["run_time"]),
            "Error": t["error"] or "",
            "Result": "" if t["result_preview"] in (None, "null") else t["result_preview"],
        }
        for t in tasks
    ]
    return pd.DataFrame(rows, columns=TASK_FIELDS)


def _status_style(status: str) -> str:
    return f"color: {STATUS_COLORS.get(status, 'inherit')}; font-weight: 600"


def styled_tasks(frame: pd.DataFrame) -> Styler:
    """The status column in its colour: the state of a page of tasks at a glance."""
    return frame.style.map(_status_style, subset=["Status"])


def _state_style(state: str) -> str:
    if state == "OFFLINE":
        return f"color: {STATUS_COLORS['failed']}; font-weight: 700"
    if state.startswith("LOST"):
        return "color: #E69F00; font-weight: 700"
    return f"color: {STATUS_COLORS['completed']}"


def styled_workers(frame: pd.DataFrame) -> Styler:
    return frame.style.map(_state_style, subset=["State"])


def current_tasks(task_ids: Sequence[str]) -> str:
    """The first few ids and how many more: a row stays one line wide however busy."""
    shown = ", ".join(task_ids[:CURRENT_TASKS_SHOWN])
    more = len(task_ids) - CURRENT_TASKS_SHOWN
    return f"{shown} +{more}" if more > 0 else shown


def workers_frame(workers: Sequence[dict[str, Any]], offline_after: float) -> pd.DataFrame:
    """A worker per row, in the columns of WORKER_FIELDS."""
    now = datetime.now(UTC)
    rows = []
    for w in workers:
        age = seconds_since(w["last_heartbeat"], now) or 0.0
        info = w.get("system_info") or {}
        rows.append(
            {
                "Worker": w["worker_id"],
                "State": worker_state(w["status"], age, offline_after),
                "Heartbeat": f"{duration(age)} ago",
                "Slots": f"{len(w['current_tasks'])} / {w['max_concurrent_tasks']}",
                "Current tasks": current_tasks(w["current_tasks"]),
                "CPU %": info.get("cpu_usage"),
                "Memory %": info.get("memory_usage"),
                "Disk %": info.get("disk_usage"),
                "Capabilities": ", ".join(w["capabilities"]),
                "Host": w.get("hostname") or "",
            }
        )
    return pd.DataFrame(rows, columns=WORKER_FIELDS)


def worker_state(status: str, age: float, offline_after: float) -> str:
    """Offline and lost workers must stand out in a list of healthy ones."""
    if status == "offline":
        return "OFFLINE"
    if age > offline_after:
        return "LOST (no heartbeat)"
    return status


def _percent(label: str) -> Any:
    return st.column_config.ProgressColumn(
        label, format="%.0f", min_value=0, max_value=100, width="small"
    )


WORKER_FIELDS = [
    "Worker", "State", "Heartbeat", "Slots", "Current tasks", "CPU %", "Memory %", "Disk %",
    "Capabilities", "Host",
]  # fmt: skip
# What an operator scans for, fitting 1280 px without a scroll; the capabilities and the host
# (long, and rarely what one acts on) are in WORKER_DETAIL_ORDER, a table of their own.
WORKER_ORDER = (
    "Worker", "State", "Heartbeat", "Slots", "Current tasks", "CPU %", "Memory %", "Disk %",
)  # fmt: skip
WORKER_DETAIL_ORDER = ("Worker", "Host", "Capabilities")
WORKER_COLUMNS = {
    "Worker": st.column_config.TextColumn("Worker", pinned=True),
    "State": st.column_config.TextColumn("State", width="small"),
    "Heartbeat": st.column_config.TextColumn("Heartbeat", width="small"),
    "Slots": st.column_config.TextColumn("Slots", width="small"),
    "CPU %": _percent("CPU %"),
    "Memory %": _percent("Mem %"),
    "Disk %": _percent("Disk %"),
    "Current tasks": st.column_config.TextColumn("Current tasks", width="medium"),
}
