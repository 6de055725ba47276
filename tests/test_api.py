"""API contract: the seed's shapes, and a clear 4xx naming the field for every kind of bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import seed_example


def _field(response: httpx.Response) -> list[Any]:
    loc: list[Any] = response.json()["detail"][0]["loc"]
    return loc


async def test_submit_seed_example_returns_201_and_the_task(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/tasks", json=seed_example())
    assert response.status_code == 201
    body = response.json()
    assert body["task_id"] == "unique-task-id"
    assert body["status"] == "pending"
    assert body["created_at"].endswith("Z")
    assert response.headers["x-correlation-id"] == body["correlation_id"]


async def test_get_task_has_the_seed_fields(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json=seed_example())
    body = (await api.get("/api/tasks/unique-task-id")).json()
    for key in (
        "task_id",
        "status",
        "worker_id",
        "created_at",
        "started_at",
        "completed_at",
        "result",
        "error",
    ):
        assert key in body
    assert body["attempts"] == []
    assert body["dependents"] == []


async def test_task_id_is_generated_when_omitted(api: httpx.AsyncClient) -> None:
    body = (await api.post("/api/tasks", json={"task_type": "echo"})).json()
    assert len(body["task_id"]) == 36


async def test_identical_resubmission_is_idempotent(api: httpx.AsyncClient) -> None:
    first = await api.post("/api/tasks", json=seed_example())
    again = await api.post("/api/tasks", json=seed_example())
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["created_at"] == first.json()["created_at"]
    total = (await api.get("/api/tasks")).json()["total"]
    assert total == 1


async def test_same_id_with_a_different_body_is_409(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json=seed_example())
    response = await api.post("/api/tasks", json=seed_example(priority=5))
    assert response.status_code == 409
    assert _field(response) == ["body", "task_id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"priority": 0}, "priority"),
        ({"priority": 11}, "priority"),
        ({"priority": "5"}, "priority"),
        ({"priority": 2.5}, "priority"),
        ({"priority": True}, "priority"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -3}, "timeout"),
        ({"timeout": 10**9}, "timeout"),
        ({"task_type": ""}, "task_type"),
        ({"task_type": "has space"}, "task_type"),
        ({"task_type": "x" * 101}, "task_type"),
        ({"task_type": None}, "task_type"),
        ({"dependencies": "a"}, "dependencies"),
        ({"dependencies": [1]}, "dependencies"),
        ({"payload": [1, 2]}, "payload"),
        ({"task_id": "bad id!"}, "task_id"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(
    api: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    response = await api.post("/api/tasks", json=seed_example(**change))
    assert response.status_code == 422
    assert field in _field(response)
    assert (await api.get("/api/tasks")).json()["total"] == 0  # nothing half-written


async def test_missing_task_type_is_422(api: httpx.AsyncClient) -> None:
    body = seed_example()
    del body["task_type"]
    response = await api.post("/api/tasks", json=body)
    assert response.status_code == 422
    assert _field(response) == ["body", "task_type"]


async def test_malformed_json_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_self_dependency_is_rejected(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/tasks", json=seed_example(dependencies=["unique-task-id"]))
    assert response.status_code == 422
    assert _field(response) == ["body", "dependencies"]


async def test_unknown_dependency_is_rejected_with_its_index(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json={"task_id": "known", "task_type": "echo"})
    response = await api.post("/api/tasks", json=seed_example(dependencies=["known", "ghost"]))
    assert response.status_code == 422
    assert _field(response) == ["body", "dependencies", 1]
    assert "ghost" in response.json()["detail"][0]["msg"]
    assert (await api.get("/api/tasks/unique-task-id")).status_code == 404


async def test_payload_over_the_limit_is_413(api: httpx.AsyncClient) -> None:
    limit = api.app.state.settings.max_payload_bytes  # type: ignore[attr-defined]
    response = await api.post("/api/tasks", json=seed_example(payload={"data": "x" * limit}))
    assert response.status_code == 413
    assert _field(response) == ["body", "payload"]


async def test_unknown_task_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/tasks/nope")
    assert response.status_code == 404
    assert _field(response) == ["path", "task_id"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("limit=-1", "limit"),
        ("limit=100000", "limit"),
        ("offset=-1", "offset"),
        ("offset=999999999999", "offset"),
        ("limit=abc", "limit"),
    ],
)
async def test_bad_list_queries_are_422(api: httpx.AsyncClient, query: str, field: str) -> None:
    response = await api.get(f"/api/tasks?{query}")
    assert response.status_code == 422
    assert _field(response) == ["query", field]


async def test_list_filters_and_pages(api: httpx.AsyncClient) -> None:
    for i in range(5):
        await api.post("/api/tasks", json={"task_id": f"e{i}", "task_type": "echo"})
    await api.post("/api/tasks", json={"task_id": "s0", "task_type": "sleep"})
    page = (await api.get("/api/tasks?status=pending&task_type=echo&limit=2&offset=1")).json()
    assert page["total"] == 5
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [t["task_id"] for t in page["tasks"]] == ["e3", "e2"]
    assert (await api.get("/api/tasks?status=completed")).json()["total"] == 0


async def test_worker_register_heartbeat_and_list(api: httpx.AsyncClient) -> None:
    spec = {
        "worker_id": "worker-123",
        "capabilities": ["processing", "analysis"],
        "max_concurrent_tasks": 5,
    }
    registered = await api.post("/api/workers/register", json=spec)
    assert registered.status_code == 201
    assert registered.json()["redis_url"].startswith("redis://")
    beat = {
        "status": "active",
        "current_tasks": ["task-1", "task-2"],
        "system_info": {"cpu_usage": 45.2, "memory_usage": 67.8, "disk_usage": 23.1},
    }
    answer = await api.post("/api/workers/worker-123/heartbeat", json=beat)
    assert answer.status_code == 200
    workers = (await api.get("/api/workers")).json()["workers"]
    assert workers[0]["worker_id"] == "worker-123"
    assert workers[0]["system_info"]["cpu_usage"] == 45.2
    assert workers[0]["current_tasks"] == ["task-1", "task-2"]


async def test_heartbeat_from_unregistered_worker_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/workers/ghost/heartbeat", json={"status": "active"})
    assert response.status_code == 404
    assert _field(response) == ["path", "worker_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"worker_id": "w", "capabilities": []}, "capabilities"),
        (
            {"worker_id": "w", "capabilities": ["echo"], "max_concurrent_tasks": 0},
            "max_concurrent_tasks",
        ),
        ({"worker_id": "bad id", "capabilities": ["echo"]}, "worker_id"),
    ],
)
async def test_bad_worker_registration_is_422(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await api.post("/api/workers/register", json=body)
    assert response.status_code == 422
    assert field in _field(response)


async def test_health_reports_both_stores(api: httpx.AsyncClient) -> None:
    body = (await api.get("/health")).json()
    assert body == {"status": "ok", "database": "ok", "redis": "ok"}


async def test_openapi_is_served(api: httpx.AsyncClient) -> None:
    assert (await api.get("/docs")).status_code == 200
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {"/api/tasks", "/api/tasks/{task_id}", "/api/workers/register", "/api/workers"} <= set(
        paths
    )


async def test_metrics_expose_task_counters(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json=seed_example())
    text = (await api.get("/metrics")).text
    assert 'dts_tasks_submitted_total{task_type="processing"}' in text
