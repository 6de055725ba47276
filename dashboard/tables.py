"""DataFrames for st.dataframe, built from API answers, and their column settings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from dashboard.formatting import STATUS_COLORS, duration, parse_time, seconds_since

TASK_FIELDS = [
    "ID", "Type", "Status", "Priority", "Worker", "Attempt", "Created", "Queue wait", "Run time",
    "Error", "Result",
]  # fmt: skip
TASK_COLUMNS = {
    "ID": st.column_config.TextColumn("ID", pinned=True),
    "Created": st.column_config.DatetimeColumn("Created", format="YYYY-MM-DD HH:mm:ss"),
}


def tasks_frame(tasks: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Task summaries (GET /api/stats/tasks) as rows a person scans."""
    rows = [
        {
            "ID": t["task_id"],
            "Type": t["task_type"],
            "Status": t["status"],
            "Priority": t["priority"],
            "Worker": t["worker_id"] or "",
            "Attempt": t["attempt"],
            "Created": parse_time(t["created_at"]),
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


def workers_frame(workers: Sequence[dict[str, Any]], offline_after: float) -> pd.DataFrame:
    now = datetime.now(UTC)
    rows = []
    for w in workers:
        age = seconds_since(w["last_heartbeat"], now) or 0.0
        info = w.get("system_info") or {}
        rows.append(
            {
                "Worker": w["worker_id"],
                "State": worker_state(w["status"], age, offline_after),
                "Capabilities": ", ".join(w["capabilities"]),
                "Slots": f"{len(w['current_tasks'])} / {w['max_concurrent_tasks']}",
                "Load": len(w["current_tasks"]) / max(1, w["max_concurrent_tasks"]),
                "CPU %": info.get("cpu_usage"),
                "Memory %": info.get("memory_usage"),
                "Disk %": info.get("disk_usage"),
                "Current tasks": ", ".join(w["current_tasks"]),
                "Last heartbeat": f"{duration(age)} ago",
                "Host": w.get("hostname") or "",
            }
        )
    return pd.DataFrame(rows)


def worker_state(status: str, age: float, offline_after: float) -> str:
    """Offline and lost workers must stand out in a list of healthy ones."""
    if status == "offline":
        return "OFFLINE"
    if age > offline_after:
        return "LOST (no heartbeat)"
    return status


def _percent(label: str) -> Any:
    return st.column_config.ProgressColumn(label, format="%.0f", min_value=0, max_value=100)


WORKER_COLUMNS = {
    "Load": st.column_config.ProgressColumn("Load", format="percent", min_value=0, max_value=1),
    "CPU %": _percent("CPU %"),
    "Memory %": _percent("Memory %"),
    "Disk %": _percent("Disk %"),
}
