"""Task queue: every task, newest first, filtered by status, type, worker and priority, with a
lookup by id. Paging is by keyset (GET /api/stats/tasks), so the last page of a million tasks
costs what the first does."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import actions, tables, ui
from dashboard.formatting import STATUSES

ANY = "any"
PAGE_SIZES = (25, 50, 100)
PREFIX = "queue_"  # of the action widgets' keys


def render() -> None:
    st.title("Task queue")
    _lookup()
    filters = _filters()
    ui.live(lambda: _table(filters))


def _lookup() -> None:
    task_id = st.text_input("Find a task by id", key="queue_lookup", placeholder="task id")
    if not task_id:
        return
    task = ui.attempt(lambda: ui.client().task(task_id.strip()), "look the task up")
    if task is None:
        st.info(f"No task has the id `{task_id}`.")
        return
    st.success(f"{task['status']} · {task['task_type']} · priority {task['priority']}")
    ui.task_link(task["task_id"], label=f"Open {task['task_id']}")


def _filters() -> dict[str, Any]:
    workers = ui.attempt(ui.workers, "list the workers") or []
    status_col, type_col, worker_col, priority_col, size_col = st.columns([3, 2, 2, 1, 1])
    statuses = status_col.multiselect(
        "Status",
        STATUSES,
        default=["pending", "running"],
        key="queue_status",
    )
    task_type = type_col.selectbox(
        "Type", [ANY, *ui.task_types()], key="queue_type", accept_new_options=True
    )
    worker = worker_col.selectbox(
        "Worker", [ANY, *sorted(w["worker_id"] for w in workers)], key="queue_worker"
    )
    priority = priority_col.selectbox("Priority", [ANY, *range(10, 0, -1)], key="queue_priority")
    size = size_col.selectbox("Per page", PAGE_SIZES, index=1, key="queue_size")
    return {
        "status": list(statuses),
        "task_type": None if task_type == ANY else task_type,
        "worker_id": None if worker == ANY else worker,
        "priority": None if priority == ANY else priority,
        "limit": size,
    }


def _table(filters: dict[str, Any]) -> None:
    actions.show_outcome(PREFIX)
    pager = ui.Pager("queue_pages", tuple(sorted((k, str(v)) for k, v in filters.items())))
    page = ui.attempt(lambda: ui.client().task_page(**filters, cursor=pager.cursor), "list tasks")
    if page is None:
        return
    if not page["tasks"]:
        st.info("No task matches these filters.")
    else:
        selection = st.dataframe(
            tables.styled_tasks(tables.tasks_frame(page["tasks"], ui.zone())),
            hide_index=True,
            column_config=tables.task_columns(ui.zone()),
            on_select="rerun",
            selection_mode="single-row",
            key="queue_table",
        )
        rows = selection.selection.rows if selection else []
        if rows:
            chosen = page["tasks"][rows[0]]
            ui.task_link(chosen["task_id"], label=f"Open {chosen['task_id']}")
            actions.task_actions(chosen, PREFIX)
        else:
            st.caption("Select a row to open, cancel or retry its task.")
    pager.controls(page["next_cursor"])
    ui.updated_caption()


if __name__ == "__main__":
    render()
