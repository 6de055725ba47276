"""Schedules: every periodic schedule with its next fire and its last fires (with the outcome of
the task each made), a form to create one, and pause, resume, fire-now and delete (which asks
for confirmation). The pure parts (the cadence text, the failing test) are used by the overview
too (docs/schedules.md)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import ui
from dashboard.api_client import ApiError
from dashboard.formatting import FINAL_STATUSES, Zone, known_types, timestamp
from dashboard.views.submit import parse_payload

CATCH_UP = {
    "one": "one: fire the latest missed time once",
    "none": "none: skip missed times",
    "all": "all: fire every missed time (latest 100)",
}
FIRE_COLUMNS = ("Fire time", "Task", "Outcome")
SCHEDULE_COLUMNS = ("Schedule", "When", "State", "Next fire", "Task type", "Last fires")


def cadence(schedule: dict[str, Any]) -> str:
    """'cron 0 2 * * 1-5 (Europe/Berlin)' or 'every 300 s'."""
    if schedule.get("cron"):
        return f"cron {schedule['cron']} ({schedule['timezone']})"
    return f"every {schedule['interval_seconds']} s"


def outcome(fire: dict[str, Any]) -> str:
    return "skipped" if fire["skipped"] else (fire.get("status") or "unknown")


def failing(schedule: dict[str, Any]) -> tuple[int, int] | None:
    """(failed, finished) among the schedule's last fires when the newest finished one failed,
    else None: one failure followed by a success is history, not an alert."""
    finished = [f for f in schedule.get("last_fires") or [] if f.get("status") in FINAL_STATUSES]
    if not finished or finished[0]["status"] != "failed":
        return None
    return sum(f["status"] == "failed" for f in finished), len(finished)


def failing_lines(schedules: list[dict[str, Any]]) -> list[str]:
    """One sentence per schedule whose recent runs fail (for the overview)."""
    lines = []
    for schedule in schedules:
        found = failing(schedule)
        if found is not None:
            failed, finished = found
            lines.append(
                f"Schedule '{schedule['schedule_id']}' is failing: {failed} of its last "
                f"{finished} finished runs failed, the latest included."
            )
    return lines


def schedules_frame(schedules: list[dict[str, Any]], zone: Zone) -> pd.DataFrame:
    rows = [
        {
            "Schedule": s["schedule_id"],
            "When": cadence(s),
            "State": "active" if s["enabled"] else "paused",
            "Next fire": timestamp(s["next_fire_at"], zone),
            "Task type": s["task"]["task_type"],
            "Last fires": ", ".join(outcome(f) for f in s.get("last_fires") or []) or "—",
        }
        for s in schedules
    ]
    return pd.DataFrame(rows, columns=SCHEDULE_COLUMNS)


def render() -> None:
    st.title("Schedules")
    ui.live(_live)
    with st.expander("New schedule", icon=":material/add_circle:"):
        _create_form()


def _live() -> None:
    _show_outcome()
    schedules = ui.attempt(ui.schedules, "list the schedules")
    if schedules is None:
        return
    if not schedules:
        st.info("No schedule yet: create one below, or `POST /api/schedules`.")
        ui.updated_caption()
        return
    st.dataframe(schedules_frame(schedules, ui.zone()), hide_index=True)
    ids = [s["schedule_id"] for s in schedules]
    chosen = st.selectbox("Schedule", ids, key="schedule_chosen")
    if chosen is not None:
        _detail(chosen)
    ui.updated_caption()


def _next_fire(schedule: dict[str, Any]) -> str:
    at = schedule["next_fire_at"]
    return "— (paused or ended)" if at is None else timestamp(at, ui.zone())


def _detail(schedule_id: str) -> None:
    with ui.api_errors("load the schedule"):
        schedule = ui.client().schedule(schedule_id)
        if schedule is None:
            st.warning(f"No schedule has the id `{schedule_id}` any more.")
            return
        st.subheader(f"{schedule_id} · {cadence(schedule)}")
        st.caption(
            f"Next fire: {_next_fire(schedule)} · catch-up "
            f"{schedule['catch_up']} · at most {schedule['max_concurrent_runs'] or 'any'} running"
        )
        _actions(schedule)
        fires = schedule["last_fires"]
        if not fires:
            st.caption("It has not fired yet.")
            return
        frame = pd.DataFrame(
            [[timestamp(f["fire_at"], ui.zone()), f["task_id"] or "—", outcome(f)] for f in fires],
            columns=list(FIRE_COLUMNS),
        )
        st.dataframe(frame, hide_index=True)
        latest = next((f["task_id"] for f in fires if f["task_id"]), None)
        if latest is not None:
            ui.task_link(latest, label="Open the latest task")


def _actions(schedule: dict[str, Any]) -> None:
    schedule_id, enabled = schedule["schedule_id"], schedule["enabled"]
    toggle, fire, delete, confirm = st.columns([1, 1, 1, 2])
    toggle.button(
        "Pause" if enabled else "Resume",
        key="schedule_toggle",
        on_click=_act,
        args=("pause" if enabled else "resume", schedule_id),
        help="A resumed schedule fires from now on: the paused times are not replayed.",
    )
    fire.button("Fire now", key="schedule_trigger", on_click=_act, args=("trigger", schedule_id))
    sure = confirm.checkbox(f"Yes, delete '{schedule_id}'", key="schedule_confirm_delete")
    delete.button(
        "Delete",
        key="schedule_delete",
        disabled=not sure,
        on_click=_act,
        args=("delete", schedule_id),
        help="Tick the confirmation first. The tasks it made stay.",
    )


def _act(action: str, schedule_id: str) -> None:
    """Button callback: do it and keep the outcome for the message after the rerun."""
    api = ui.client()
    try:
        if action == "trigger":
            task_id = api.trigger_schedule(schedule_id)["task_id"]
            message = f"Fired `{schedule_id}` now: task `{task_id}`."
        elif action == "delete":
            api.delete_schedule(schedule_id)
            st.session_state["schedule_confirm_delete"] = False
            message = f"Deleted `{schedule_id}`."
        else:
            api.update_schedule(schedule_id, {"enabled": action == "resume"})
            message = f"{action.capitalize()}d `{schedule_id}`."
    except ApiError as exc:
        st.session_state["schedule_action"] = (action, exc)
        return
    ui.forget_cached_reads()
    st.session_state["schedule_action"] = (action, message)


def _show_outcome() -> None:
    found = st.session_state.pop("schedule_action", None)
    if found is None:
        return
    action, result = found
    if isinstance(result, ApiError):
        ui.show_error(result, f"{action} the schedule")
    else:
        st.success(result)


def _create_form() -> None:
    types = known_types(ui.attempt(ui.workers, "list the workers' task types") or [])
    with st.form("schedule_create"):
        schedule_id = st.text_input("Schedule id", key="new_id", placeholder="nightly-report")
        kind = st.radio("Fires", ["every N seconds", "cron"], key="new_kind", horizontal=True)
        interval = st.number_input("Interval (seconds)", min_value=1, value=300, key="new_interval")
        cron = st.text_input("Cron (5 fields)", key="new_cron", placeholder="0 2 * * 1-5")
        timezone = st.text_input("Time zone (for cron)", value="UTC", key="new_timezone")
        task_type = st.selectbox("Task type", types, key="new_type", accept_new_options=True)
        payload = st.text_area("Payload (JSON object)", value="{}", key="new_payload")
        priority = st.slider("Priority", 1, 10, 1)
        catch_up = st.selectbox("Catch-up", list(CATCH_UP), format_func=CATCH_UP.__getitem__)
        limit = st.number_input("At most this many running (0: no limit)", min_value=0, value=0)
        if not st.form_submit_button("Create schedule"):
            return
    try:
        task = {"task_type": task_type, "payload": parse_payload(payload), "priority": priority}
    except ValueError as exc:
        st.error(str(exc))
        return
    spec: dict[str, Any] = {"schedule_id": schedule_id.strip(), "task": task, "catch_up": catch_up}
    if kind == "cron":
        spec |= {"cron": cron.strip(), "timezone": timezone.strip()}
    else:
        spec["interval_seconds"] = int(interval)
    if limit:
        spec["max_concurrent_runs"] = int(limit)
    try:
        created = ui.client().create_schedule(spec)
    except ApiError as exc:
        ui.show_error(exc, "create the schedule")
        return
    ui.forget_cached_reads()
    st.success(f"Created `{created['schedule_id']}`; first fire {_next_fire(created)}.")


if __name__ == "__main__":
    render()
