"""The /api/schedules contract: shapes and statuses, 4xx naming the field, the trigger's task,
and the leader's loop firing a schedule in the running app."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.conftest import running
from tests.integration.harness import eventually

# State-changing calls without a key carry a JSON content type (CSRF guard, app/api/limits.py).
JSON = {"Content-Type": "application/json"}
HOURLY = {
    "schedule_id": "hourly",
    "cron": "0 * * * *",
    "timezone": "Europe/Berlin",
    "task": {"task_type": "report", "payload": {"k": 1}, "priority": 3, "timeout": 60},
}


def loc(response: httpx.Response) -> list[Any]:
    found: list[Any] = response.json()["detail"][0]["loc"]
    return found


async def test_create_answers_the_schedule_with_its_next_fire(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/schedules", json=HOURLY)
    assert response.status_code == 201
    body = response.json()
    assert body["schedule_id"] == "hourly"
    assert body["next_fire_at"].endswith(":00:00Z")
    assert body["catch_up"] == "one" and body["enabled"] is True
    assert body["task"]["payload"] == {"k": 1}
    assert body["last_fires"] == []
    again = await api.post("/api/schedules", json=HOURLY)
    assert again.status_code == 409
    assert loc(again) == ["body", "schedule_id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "0 25 * * *"}, "cron"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"interval_seconds": 60}, "interval_seconds"),  # both
        ({"cron": None}, "interval_seconds"),  # neither
        ({"interval_seconds": 0, "cron": None}, "interval_seconds"),
    ],
)
async def test_invalid_schedules_get_422_naming_the_field(
    api: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    response = await api.post("/api/schedules", json=HOURLY | change)
    assert response.status_code == 422
    assert loc(response) == ["body", field]


async def test_list_get_patch_delete(api: httpx.AsyncClient) -> None:
    await api.post("/api/schedules", json=HOURLY)
    await api.post("/api/schedules", json=HOURLY | {"schedule_id": "a-first"})
    listed = (await api.get("/api/schedules")).json()
    assert [s["schedule_id"] for s in listed["schedules"]] == ["a-first", "hourly"]
    paused = await api.patch("/api/schedules/hourly", json={"enabled": False})
    assert paused.status_code == 200
    assert paused.json()["enabled"] is False and paused.json()["next_fire_at"] is None
    resumed = (await api.patch("/api/schedules/hourly", json={"enabled": True})).json()
    assert resumed["next_fire_at"] is not None
    bad = await api.patch("/api/schedules/hourly", json={"cron": None})
    assert bad.status_code == 422 and loc(bad) == ["body", "cron"]
    assert (await api.delete("/api/schedules/hourly", headers=JSON)).status_code == 204
    assert (await api.get("/api/schedules/hourly")).status_code == 404
    gone = await api.delete("/api/schedules/hourly", headers=JSON)
    assert gone.status_code == 404 and loc(gone) == ["path", "schedule_id"]
    assert (await api.patch("/api/schedules/nope", json={"enabled": False})).status_code == 404


async def test_trigger_creates_an_ordinary_task_named_after_the_schedule(
    api: httpx.AsyncClient,
) -> None:
    await api.post("/api/schedules", json=HOURLY | {"enabled": False})
    response = await api.post("/api/schedules/hourly/trigger", json={})
    assert response.status_code == 201
    task = response.json()
    assert re.fullmatch(r"hourly:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", task["task_id"])
    assert task["correlation_id"] == "schedule:hourly"
    assert (task["task_type"], task["priority"], task["timeout"]) == ("report", 3, 60)
    assert (await api.get(f"/api/tasks/{task['task_id']}")).json()["status"] == "pending"
    fires = (await api.get("/api/schedules/hourly")).json()["last_fires"]
    assert fires == [
        {"fire_at": fires[0]["fire_at"], "task_id": task["task_id"], "status": "pending"}
        | {"skipped": False}
    ]
    assert (await api.post("/api/schedules/nope/trigger", json={})).status_code == 404


async def test_a_payload_over_the_limit_is_refused_at_creation(api: httpx.AsyncClient) -> None:
    # Over MAX_PAYLOAD_BYTES (1 MiB), under the request limit (1 MiB + 64 KiB).
    big = {"task_type": "report", "payload": {"blob": "x" * 1_060_000}}
    response = await api.post("/api/schedules", json=HOURLY | {"task": big})
    assert response.status_code == 413
    assert loc(response) == ["body", "task", "payload"]


async def test_the_running_app_fires_an_interval_schedule(settings: Settings) -> None:
    """The leader step is registered in the lifespan: the app's own loop fires."""
    async with running(settings) as client:
        body = {"schedule_id": "tick", "interval_seconds": 1, "task": {"task_type": "echo"}}
        assert (await client.post("/api/schedules", json=body)).status_code == 201

        async def fired_twice() -> bool:
            fires = (await client.get("/api/schedules/tick")).json()["last_fires"]
            return len(fires) >= 2

        await eventually(fired_twice, timeout=15, what="two fires of the schedule")
        tasks = (await client.get("/api/tasks", params={"task_type": "echo"})).json()["tasks"]
        assert all(t["task_id"].startswith("tick:") for t in tasks) and len(tasks) >= 2
