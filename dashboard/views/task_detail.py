"""Task detail: every field, payload and result, the attempts as a timeline, the operator actions
taken on it (with the key of each), the tasks it waits for and the tasks waiting for it, and the
cancel and retry actions. The id is in the URL (?task_id=...), so a task's page can be linked to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, ui
from dashboard.api_client import ApiError
from dashboard.formatting import FINAL_STATUSES, STATUS_BADGES, duration, seconds_since

# Two short tables side by side: what the task is, and when things happened to it.
FIELDS = ("task_type", "priority", "worker_id", "attempt", "max_retries", "timeout")
TIMES = ("created_at", "scheduled_at", "started_at", "completed_at")


def render() -> None:
    st.title("Task detail")
    task_id = st.text_input("Task id", key="task_id", bind="query-params", placeholder="task id")
    if not task_id:
        st.info("Enter a task id, or open a task from the task queue.")
        return
    ui.live(lambda: _task(task_id.strip()))


def _task(task_id: str) -> None:
    _show_outcome()  # inside the fragment: a button click reruns only the fragment
    with ui.api_errors("load the task"):
        task = ui.client().task(task_id)
        if task is None:
            st.warning(f"No task has the id `{task_id}`.")
            return
        _header(task)
        _actions(task)
        _fields(task)
        _data(task)
        _attempts(task)
        _events(task)
        _relations(task)
        ui.updated_caption()


def _header(task: dict[str, Any]) -> None:
    badge = STATUS_BADGES.get(task["status"], "gray")
    st.subheader(f"{task['task_id']} :{badge}-badge[{task['status']}]")
    if task.get("error"):
        st.error(f"Error: {task['error']}")


def _fields(task: dict[str, Any]) -> None:
    what, when = st.columns(2)
    what.dataframe(_rows(task, FIELDS, str), hide_index=True)
    times = _rows(task, TIMES, lambda v: str(v).replace("T", " ")[:19] + " UTC")
    if task["status"] == "pending" and task["started_at"] is None:
        times.loc[len(times)] = ["waiting for", duration(seconds_since(task["created_at"]))]
    times.loc[len(times)] = ["correlation_id", task.get("correlation_id") or ""]
    when.dataframe(times, hide_index=True)


def _rows(task: dict[str, Any], names: tuple[str, ...], show: Callable[[Any], str]) -> pd.DataFrame:
    values = ["" if task.get(n) is None else show(task[n]) for n in names]
    return pd.DataFrame({"field": list(names), "value": values})


def _data(task: dict[str, Any]) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown("**Payload**")
        st.json(task["payload"], expanded=2)
    with right:
        st.markdown("**Result**")
        if task.get("result") is None:
            st.caption("No result yet." if task["status"] not in FINAL_STATUSES else "No result.")
        else:
            st.json(task["result"], expanded=2)


def _attempts(task: dict[str, Any]) -> None:
    attempts = task.get("attempts") or []
    st.markdown(f"**Attempts** ({len(attempts)})")
    if not attempts:
        st.caption("Not started yet.")
        return
    st.altair_chart(charts.attempts_timeline(attempts, pd.Timestamp.now(tz="UTC")))
    frame = pd.DataFrame(
        attempts, columns=["attempt", "worker_id", "started_at", "ended_at", "outcome", "error"]
    )
    st.dataframe(frame, hide_index=True)


def _events(task: dict[str, Any]) -> None:
    """Operator actions on the task (cancel, retry) and the key that made each (audit)."""
    events = task.get("events") or []
    if not events:
        return
    st.markdown(f"**Operator actions** ({len(events)})")
    rows = [
        {
            "at": str(e["at"]).replace("T", " ")[:19] + " UTC",
            "action": e["action"],
            "key": e.get("key_id") or "(no key)",
            "detail": ", ".join(f"{k}: {v}" for k, v in (e.get("detail") or {}).items()),
        }
        for e in events
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def _relations(task: dict[str, Any]) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Depends on** ({len(task['dependencies'])})")
        for dep in task["dependencies"]:
            ui.task_link(dep)
    with right:
        dependents = task.get("dependents") or []
        st.markdown(f"**Needed by** ({len(dependents)})")
        for dep in dependents:
            ui.task_link(dep)
    if task["dependencies"] or dependents:
        st.page_link(
            ui.DAG_PAGE,
            label="Show the dependency graph",
            icon=":material/account_tree:",
            query_params={"task_id": task["task_id"]},
        )


# --- actions ------------------------------------------------------------------------------------


def _actions(task: dict[str, Any]) -> None:
    status = task["status"]
    cancel_col, retry_col, _ = st.columns([1, 1, 4])
    cancel_col.button(
        "Cancel task",
        key="cancel",
        disabled=status in FINAL_STATUSES,
        on_click=_act,
        args=("cancel", task["task_id"]),
        help="Stop it: pending tasks never start; running ones are told to stop.",
    )
    retry_col.button(
        "Retry task",
        key="retry",
        disabled=status not in ("failed", "cancelled"),
        on_click=_act,
        args=("retry", task["task_id"]),
        help="Run a failed or cancelled task again.",
    )


def _act(action: str, task_id: str) -> None:
    """Button callback: do it and keep the outcome for the message after the rerun."""
    api = ui.client()
    try:
        task = api.cancel(task_id) if action == "cancel" else api.retry(task_id)
    except ApiError as exc:
        st.session_state["task_action"] = (action, exc)
        return
    ui.forget_cached_reads()
    st.session_state["task_action"] = (action, task)


def _show_outcome() -> None:
    outcome = st.session_state.pop("task_action", None)
    if outcome is None:
        return
    action, result = outcome
    if isinstance(result, ApiError):
        ui.show_error(result, f"{action} the task")
    else:
        st.success(f"{action.capitalize()}: the task is now {result['status']}.")


if __name__ == "__main__":
    render()
