"""Task detail: every field, payload and result, the attempts as a timeline, what its handlers
printed and logged (per attempt, following a running task), the operator actions taken on it
(with the key of each), the tasks it waits for and the tasks waiting for it, and the cancel and
retry actions. The id is in the URL (?task_id=...), so a task's page can be linked to."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, charts, ui
from dashboard.api_client import NotSupported
from dashboard.formatting import (
    FINAL_STATUSES,
    OUTCOME_COLORS,
    STATUS_BADGES,
    Zone,
    clock,
    duration,
    seconds_since,
    timestamp,
)

# Two short tables side by side: what the task is, and when things happened to it.
FIELDS = ("task_type", "priority", "worker_id", "attempt", "max_retries", "timeout")
TIMES = ("created_at", "scheduled_at", "started_at", "completed_at")
# The log shows the last lines of an attempt, read a page (1,000 lines) at a time up to a cap.
LOG_TAIL_LINES = 1000
LOG_PAGE_LINES = 1000  # the API's default page
LOG_MAX_PAGES = 20
PREFIX = "task_"  # of the action widgets' keys


def render() -> None:
    st.title("Task detail")
    task_id = st.text_input("Task id", key="task_id", bind="query-params", placeholder="task id")
    if not task_id:
        st.info("Enter a task id, or open a task from the task queue.")
        return
    ui.live(lambda: _task(task_id.strip()))


def _task(task_id: str) -> None:
    actions.show_outcome(PREFIX)  # inside the fragment: a button click reruns only the fragment
    with ui.api_errors("load the task"):
        task = ui.client().task(task_id)
        if task is None:
            st.warning(f"No task has the id `{task_id}`.")
            return
        _header(task)
        actions.task_actions(task, PREFIX)
        _fields(task)
        _data(task)
        _attempts(task)
        _logs(task)
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
    times = _rows(task, TIMES, lambda v: timestamp(v, ui.zone()))
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
    now = datetime.now(UTC)
    if any(a.get("started_at") for a in attempts):
        st.altair_chart(charts.attempts_timeline(attempts, now, ui.zone()))
        ui.color_legend(
            {o: OUTCOME_COLORS[o] for o in dict.fromkeys(a["outcome"] for a in attempts)}
        )
    zone = ui.zone()
    frame = pd.DataFrame(
        [
            {
                "attempt": a["attempt"],
                "worker": a.get("worker_id") or "",
                "started": timestamp(a.get("started_at"), zone),
                "ended": timestamp(a.get("ended_at"), zone) if a.get("ended_at") else "",
                "outcome": a["outcome"],
                "error": a.get("error") or "",
            }
            for a in attempts
        ]
    )
    st.dataframe(frame, hide_index=True)


def _logs(task: dict[str, Any]) -> None:
    """What the handler wrote, one attempt at a time (the latest by default). The page's live
    refresh re-reads it, so a running task's log grows as it runs."""
    st.markdown("**Logs**")
    if not task["attempt"]:
        st.caption("Not started yet: no logs.")
        return
    attempts = list(range(task["attempt"], 0, -1))
    chosen = st.selectbox(
        "Attempt",
        attempts,
        key=f"log_attempt_{task['task_id']}",
        format_func=lambda n: f"attempt {n}" + (" (latest)" if n == attempts[0] else ""),
    )
    try:
        lines, more = _log_tail(task["task_id"], chosen)
    except NotSupported:
        st.caption("This API does not keep task logs.")
        return
    if not lines:
        st.caption("Nothing printed or logged in this attempt.")
        return
    if more:
        st.caption(f"The last {LOG_TAIL_LINES} lines; `dts logs {task['task_id']}` shows all.")
    st.code("\n".join(_log_text(line, ui.zone()) for line in lines), language=None)


def _log_tail(task_id: str, attempt: int) -> tuple[list[dict[str, Any]], bool]:
    """The attempt's last LOG_TAIL_LINES lines, and whether earlier ones were left out."""
    tail: deque[dict[str, Any]] = deque(maxlen=LOG_TAIL_LINES)
    after, read = None, 0
    for _page in range(LOG_MAX_PAGES):
        page = ui.client().task_logs(task_id, attempt=attempt, after=after)
        tail.extend(page["lines"])
        read += len(page["lines"])
        if len(page["lines"]) < LOG_PAGE_LINES:  # the last page
            break
        after = page["next_after"]
    return list(tail), read > len(tail)


def _log_text(line: dict[str, Any], zone: Zone) -> str:
    at = clock(line["at"], zone)
    source = line["level"] if line["stream"] == "log" else line["stream"]
    return f"{at} {source:<7} {line['message']}"


def _events(task: dict[str, Any]) -> None:
    """Operator actions on the task (cancel, retry) and the key that made each (audit)."""
    events = task.get("events") or []
    if not events:
        return
    st.markdown(f"**Operator actions** ({len(events)})")
    rows = [
        {
            "at": timestamp(e["at"], ui.zone()),
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


if __name__ == "__main__":
    render()
