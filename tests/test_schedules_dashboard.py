"""The Schedules page and the overview's line for failing schedules, under Streamlit's AppTest
against a real API process (fixtures of tests/test_dashboard.py); the pure parts at the end."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app.utils.embedded_servers import ValkeyServer, free_port
from dashboard.views.schedules import cadence, failing, failing_lines
from tests.test_dashboard import (  # noqa: F401 (fixtures)
    APP,
    api,
    dashboard,
    live_api,
    run_as_worker,
    texts,
    unique,
)

PAGE = "dashboard/views/schedules.py"


def schedules_page() -> AppTest:
    """The app on the Schedules page, run once, with fresh reads."""
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def http(request: pytest.FixtureRequest) -> httpx.Client:
    """The live API's client of tests/test_dashboard.py (API_URL points the dashboard at it);
    asked by name, as a parameter named `api` would shadow the import that makes it visible."""
    client: httpx.Client = request.getfixturevalue("api")
    return client


def create(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"schedule_id": unique("sch"), "interval_seconds": 3600, "task": {"task_type": "echo"}}
    response = http.post("/api/schedules", json=body | fields)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_the_page_lists_schedules_and_fires_pauses_and_deletes(http: httpx.Client) -> None:
    schedule = create(http)
    schedule_id = schedule["schedule_id"]
    at = schedules_page()
    assert at.title[0].value == "Schedules"
    listed = at.dataframe[0].value
    assert schedule_id in list(listed["Schedule"])
    at.selectbox(key="schedule_chosen").set_value(schedule_id).run()
    assert "every 3600 s" in texts(at.subheader)

    at.button(key="schedule_trigger").click().run()
    assert f"Fired `{schedule_id}` now" in texts(at.success)
    fires = http.get(f"/api/schedules/{schedule_id}").json()["last_fires"]
    assert len(fires) == 1 and fires[0]["task_id"].startswith(f"{schedule_id}:")

    at.button(key="schedule_toggle").click().run()
    assert f"Paused `{schedule_id}`" in texts(at.success)
    assert http.get(f"/api/schedules/{schedule_id}").json()["enabled"] is False

    assert at.button(key="schedule_delete").disabled  # not without the confirmation
    at.checkbox(key="schedule_confirm_delete").check().run()
    at.button(key="schedule_delete").click().run()
    assert f"Deleted `{schedule_id}`" in texts(at.success)
    assert http.get(f"/api/schedules/{schedule_id}").status_code == 404


def test_the_form_creates_a_cron_schedule_and_shows_refusals(http: httpx.Client) -> None:
    schedule_id = unique("form")
    at = schedules_page()
    at.text_input(key="new_id").set_value(schedule_id)
    at.radio(key="new_kind").set_value("cron")
    at.text_input(key="new_cron").set_value("0 25 * * *")
    at.button[-1].click().run()
    assert "cron" in texts(at.error)  # the API's 422 names the field
    at.text_input(key="new_cron").set_value("30 2 * * 1-5")
    at.text_input(key="new_timezone").set_value("Europe/Berlin")
    at.button[-1].click().run()
    assert f"Created `{schedule_id}`" in texts(at.success)
    stored = http.get(f"/api/schedules/{schedule_id}").json()
    assert (stored["cron"], stored["timezone"]) == ("30 2 * * 1-5", "Europe/Berlin")


def test_the_overview_says_when_a_schedules_recent_runs_fail(
    http: httpx.Client, valkey: ValkeyServer
) -> None:
    kind = unique("flaky")
    schedule = create(http, task={"task_type": kind, "max_retries": 0}, enabled=False)
    schedule_id = schedule["schedule_id"]
    task_id = http.post(f"/api/schedules/{schedule_id}/trigger", json={}).json()["task_id"]
    assert f"Schedule '{schedule_id}' is failing" not in texts(dashboard("overview").warning)
    run_as_worker(http, valkey.url, kind, {task_id: RuntimeError("boom")})
    at = dashboard("overview")
    assert f"Schedule '{schedule_id}' is failing: 1 of its last 1" in texts(at.warning)


def test_api_down_is_a_message_on_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_URL", f"http://127.0.0.1:{free_port()}")
    at = schedules_page()
    assert "scheduler API is unavailable" in texts(at.error)


# --- pure parts ------------------------------------------------------------------------------


def fire(status: str | None, skipped: bool = False) -> dict[str, Any]:
    return {"fire_at": "2026-12-01T02:00:00Z", "task_id": "t", "status": status, "skipped": skipped}


def test_a_schedule_fails_when_its_newest_finished_run_failed() -> None:
    newest_first = [fire("running"), fire("failed"), fire(None, True), fire("completed")]
    assert failing({"last_fires": newest_first}) == (1, 2)
    assert failing({"last_fires": [fire("completed"), fire("failed")]}) is None
    assert failing({"last_fires": []}) is None
    lines = failing_lines([{"schedule_id": "a", "last_fires": newest_first}])
    assert lines == [
        "Schedule 'a' is failing: 1 of its last 2 finished runs failed, the latest included."
    ]


def test_cadence_text() -> None:
    assert cadence({"cron": "0 2 * * *", "timezone": "UTC"}) == "cron 0 2 * * * (UTC)"
    assert cadence({"cron": None, "interval_seconds": 5}) == "every 5 s"
