"""Cancel and retry, with the confirmation every destructive action of the dashboard asks for
(a tick in a box beside the buttons, as a schedule's delete has): one stray click must not stop
a running task. Used by the task detail and the task queue pages; `prefix` keeps their widget
keys apart."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import ui
from dashboard.api_client import ApiError
from dashboard.formatting import FINAL_STATUSES

RETRYABLE = frozenset({"failed", "cancelled"})


def task_actions(task: dict[str, Any], prefix: str) -> None:
    """The two buttons and the box that arms them. At most one of the two applies at a time:
    cancel while the task has not ended, retry once it failed or was cancelled."""
    status, task_id = task["status"], task["task_id"]
    verb = "cancel" if status not in FINAL_STATUSES else "retry"
    cancel_col, retry_col, confirm_col = st.columns([1, 1, 3])
    sure = confirm_col.checkbox(
        f"Yes, {verb} '{task_id}'",
        key=f"{prefix}confirm",
        disabled=verb == "retry" and status not in RETRYABLE,
    )
    cancel_col.button(
        "Cancel task",
        key=f"{prefix}cancel",
        disabled=status in FINAL_STATUSES or not sure,
        on_click=_act,
        args=("cancel", task_id, prefix),
        help="Tick the confirmation first. Pending tasks never start; running ones are told "
        "to stop.",
    )
    retry_col.button(
        "Retry task",
        key=f"{prefix}retry",
        disabled=status not in RETRYABLE or not sure,
        on_click=_act,
        args=("retry", task_id, prefix),
        help="Tick the confirmation first. Runs a failed or cancelled task again.",
    )


def _act(action: str, task_id: str, prefix: str) -> None:
    """Button callback: do it, disarm the box, keep the outcome for the message after the
    rerun."""
    st.session_state[f"{prefix}confirm"] = False
    api = ui.client()
    try:
        task = api.cancel(task_id) if action == "cancel" else api.retry(task_id)
    except ApiError as exc:
        st.session_state[f"{prefix}action"] = (action, task_id, exc)
        return
    ui.forget_cached_reads()
    st.session_state[f"{prefix}action"] = (action, task_id, task)


def show_outcome(prefix: str) -> None:
    outcome = st.session_state.pop(f"{prefix}action", None)
    if outcome is None:
        return
    action, task_id, result = outcome
    if isinstance(result, ApiError):
        ui.show_error(result, f"{action} the task")
    else:
        st.success(f"{action.capitalize()} `{task_id}`: the task is now {result['status']}.")
