"""Submit: one task through a form with the seed's fields, or many from a JSON file."""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import ui
from dashboard.api_client import ApiError
from dashboard.formatting import known_types

EXAMPLE_PAYLOAD = '{\n  "data": "task-specific-data",\n  "parameters": {}\n}'
NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")  # the API's rule for ids and types
MAX_BATCH = 1000  # the API's default MAX_BATCH_SIZE
MAX_TIMEOUT = 7 * 24 * 3600


def parse_payload(text: str) -> dict[str, Any]:
    """The payload as a JSON object; ValueError with the position of the mistake otherwise."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"payload is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(value, dict):
        raise ValueError('payload must be a JSON object, like {"data": ...}')
    return value


def parse_ids(text: str) -> list[str]:
    """Task ids separated by commas, spaces or new lines; ValueError naming a malformed one."""
    ids = [part for part in re.split(r"[\s,]+", text.strip()) if part]
    for task_id in ids:
        if not NAME.match(task_id):
            raise ValueError(f"'{task_id}' is not a task id (letters, digits and _.:- only)")
    return ids


def parse_batch(raw: bytes) -> list[dict[str, Any]]:
    """A batch file: a JSON list of task specs, or {"tasks": [...]}."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the file is not valid JSON: {exc}") from exc
    specs = value.get("tasks") if isinstance(value, dict) else value
    if not isinstance(specs, list) or not specs:
        raise ValueError('the file must hold a non-empty list of tasks, or {"tasks": [...]}')
    if len(specs) > MAX_BATCH:
        raise ValueError(f"{len(specs)} tasks; a batch takes at most {MAX_BATCH}")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "task_type" not in spec:
            raise ValueError(f"task #{i + 1} is not an object with a task_type")
    return specs


def render() -> None:
    st.title("Submit tasks")
    types = known_types(ui.attempt(ui.workers, "list the workers' task types") or [])
    single, batch = st.tabs(["One task", "Batch from a JSON file"])
    with single:
        _form(types)
    with batch:
        _batch()


def _form(types: list[str]) -> None:
    with st.form("submit_task"):
        left, right = st.columns(2)
        task_type = left.selectbox(
            "Task type",
            types,
            index=types.index("processing"),
            accept_new_options=True,
            help="Known types, or type a new one",
        )
        task_id = right.text_input("Task id (optional)", placeholder="generated when empty")
        payload = st.text_area("Payload (JSON object)", value=EXAMPLE_PAYLOAD, height=140)
        priority = st.slider("Priority", 1, 10, value=1, help="10 runs first")
        dependencies = st.text_input("Depends on (task ids)", placeholder="id-1, id-2")
        timeout_col, retries_col, delay_col = st.columns(3)
        timeout = timeout_col.number_input("Timeout (s)", 1, MAX_TIMEOUT, value=300)
        retries = retries_col.number_input("Max retries", 0, 100, value=None, placeholder="default")
        delay = delay_col.number_input("Start after (s)", 0, 366 * 24 * 3600, value=0)
        submitted = st.form_submit_button("Submit", type="primary")
    if not submitted:
        return
    try:
        spec: dict[str, Any] = {
            "task_type": task_type,
            "payload": parse_payload(payload),
            "priority": priority,
            "dependencies": parse_ids(dependencies),
            "timeout": int(timeout),
        }
    except ValueError as exc:
        st.error(f"Not submitted: {exc}.")
        return
    if task_id.strip():
        spec["task_id"] = task_id.strip()
    if retries is not None:
        spec["max_retries"] = int(retries)
    if delay:
        spec["delay_seconds"] = delay
    _submit(spec)


def _submit(spec: dict[str, Any]) -> None:
    try:
        task = ui.client().submit(spec)
    except ApiError as exc:
        ui.show_error(exc, "submit the task")
        return
    ui.forget_cached_reads()
    st.success(f"Submitted task `{task['task_id']}`: it is {task['status']}.")
    ui.task_link(task["task_id"], label="Open it")


def _batch() -> None:
    st.caption(
        'A JSON list of tasks, or {"tasks": [...]}, each with the fields of the form '
        f"(task_type required); at most {MAX_BATCH}. They are admitted together."
    )
    upload = st.file_uploader("Batch file", type=["json"], key="batch_file")
    if upload is None:
        return
    try:
        specs = parse_batch(upload.getvalue())
    except ValueError as exc:
        st.error(f"Cannot use this file: {exc}.")
        return
    preview = pd.DataFrame(
        [
            {
                "task_id": s.get("task_id", "(generated)"),
                "task_type": s["task_type"],
                "priority": s.get("priority", 1),
                "depends on": len(s.get("dependencies", [])),
            }
            for s in specs
        ]
    )
    st.dataframe(preview, hide_index=True, height=min(400, 40 + 35 * len(specs)))
    if st.button(f"Submit {len(specs)} tasks", type="primary", key="batch_submit"):
        _submit_batch(specs)


def _submit_batch(specs: list[dict[str, Any]]) -> None:
    try:
        created = ui.client().submit_batch(specs)
    except ApiError as exc:
        ui.show_error(exc, "submit the batch")
        return
    ui.forget_cached_reads()
    st.success(f"Submitted {len(created)} tasks.")
    for task in created[:10]:
        ui.task_link(task["task_id"], label=f"{task['task_id']} ({task['status']})")


if __name__ == "__main__":
    render()
