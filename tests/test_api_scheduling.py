"""Scheduling features through the API: batches, cancellation, manual retry, graphs, queues."""

from __future__ import annotations

from typing import Any

import httpx

from app.models.task import AttemptOutcome, TaskReport
from app.services.scheduler import Scheduler
from worker.health_monitor import claim_budget


def scheduler_of(api: httpx.AsyncClient) -> Scheduler:
    return api.app.state.scheduler  # type: ignore[attr-defined,no-any-return]


async def run_and_report(
    api: httpx.AsyncClient, task_id: str, outcome: AttemptOutcome, **fields: Any
) -> None:
    scheduler = scheduler_of(api)
    claimed = await scheduler.queue.claim("w", ["echo", "fail"], 100)
    started = await scheduler.start_claimed("w", claimed)
    attempt = next(t.attempt for t in started.started if t.task_id == task_id)
    await scheduler.report(
        "w", [TaskReport(task_id=task_id, attempt=attempt, outcome=outcome, **fields)]
    )


async def test_batch_is_admitted_whole_with_dependencies_inside_it(api: httpx.AsyncClient) -> None:
    body = {
        "tasks": [
            {"task_id": "join", "task_type": "echo", "dependencies": ["a", "b"]},
            {"task_id": "a", "task_type": "echo"},
            {"task_id": "b", "task_type": "echo", "dependencies": ["a"]},
        ]
    }
    response = await api.post("/api/tasks/batch", json=body)
    assert response.status_code == 201
    result = response.json()
    assert result["created"] == 3
    assert [t["task_id"] for t in result["tasks"]] == ["join", "a", "b"]
    assert result["tasks"][0]["dependencies"] == ["a", "b"]
    assert await scheduler_of(api).queue.queue_depths() == {"echo": 1}  # only "a" is ready


async def test_a_bad_item_rejects_the_whole_batch_naming_index_and_field(
    api: httpx.AsyncClient,
) -> None:
    body = {
        "tasks": [{"task_id": "ok", "task_type": "echo"}, {"task_type": "echo", "priority": 99}]
    }
    response = await api.post("/api/tasks/batch", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "tasks", 1, "priority"]
    assert (await api.get("/api/tasks")).json()["total"] == 0


async def test_a_cycle_inside_a_batch_is_named(api: httpx.AsyncClient) -> None:
    body = {
        "tasks": [
            {"task_id": "x", "task_type": "echo", "dependencies": ["z"]},
            {"task_id": "y", "task_type": "echo", "dependencies": ["x"]},
            {"task_id": "z", "task_type": "echo", "dependencies": ["y"]},
            {"task_id": "free", "task_type": "echo"},
        ]
    }
    response = await api.post("/api/tasks/batch", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["type"] == "dependency_cycle"
    assert "['x', 'y', 'z']" in detail["msg"]
    assert (await api.get("/api/tasks")).json()["total"] == 0


async def test_batch_duplicates_and_unknown_dependencies(api: httpx.AsyncClient) -> None:
    dup = {"tasks": [{"task_id": "d", "task_type": "echo"}, {"task_id": "d", "task_type": "echo"}]}
    response = await api.post("/api/tasks/batch", json=dup)
    assert (response.status_code, response.json()["detail"][0]["loc"]) == (
        409,
        ["body", "tasks", 1, "task_id"],
    )
    ghost = {"tasks": [{"task_type": "echo"}, {"task_type": "echo", "dependencies": ["ghost"]}]}
    response = await api.post("/api/tasks/batch", json=ghost)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "tasks", 1, "dependencies", 0]


async def test_batch_resubmission_is_idempotent(api: httpx.AsyncClient) -> None:
    body = {"tasks": [{"task_id": f"i{n}", "task_type": "echo"} for n in range(3)]}
    assert (await api.post("/api/tasks/batch", json=body)).json()["created"] == 3
    assert (await api.post("/api/tasks/batch", json=body)).json()["created"] == 0


async def test_batch_size_is_limited(api: httpx.AsyncClient) -> None:
    limit = api.app.state.settings.max_batch_size  # type: ignore[attr-defined]
    body = {"tasks": [{"task_type": "echo"}] * (limit + 1)}
    response = await api.post("/api/tasks/batch", json=body)
    assert (response.status_code, response.json()["detail"][0]["loc"]) == (422, ["body", "tasks"])


async def test_cancelling_a_pending_task_cancels_its_dependents(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json={"task_id": "p", "task_type": "echo", "delay_seconds": 60})
    await api.post(
        "/api/tasks", json={"task_id": "child", "task_type": "echo", "dependencies": ["p"]}
    )
    response = await api.post("/api/tasks/p/cancel", json={})
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    child = (await api.get("/api/tasks/child")).json()
    assert (child["status"], child["error"]) == ("cancelled", "dependency 'p' was cancelled")
    again = await api.post("/api/tasks/p/cancel", json={})
    assert again.status_code == 409
    assert (await api.post("/api/tasks/nope/cancel", json={})).status_code == 404


async def test_cancelling_a_running_task_refuses_its_late_result(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json={"task_id": "r", "task_type": "echo"})
    scheduler = scheduler_of(api)
    claimed = await scheduler.queue.claim("w", ["echo"], 1)
    await scheduler.start_claimed("w", claimed)
    assert (await api.post("/api/tasks/r/cancel", json={})).json()["status"] == "cancelled"
    late = await scheduler.report(
        "w", [TaskReport(task_id="r", attempt=1, outcome=AttemptOutcome.COMPLETED)]
    )
    assert late.refused == ["r"]
    task = (await api.get("/api/tasks/r")).json()
    assert (task["status"], task["result"]) == ("cancelled", None)
    assert [a["outcome"] for a in task["attempts"]] == ["cancelled"]


async def test_manual_retry_runs_a_failed_task_again(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json={"task_id": "f", "task_type": "fail", "max_retries": 0})
    await run_and_report(api, "f", AttemptOutcome.ERROR, error="first")
    assert (await api.get("/api/tasks/f")).json()["status"] == "failed"
    retried = await api.post("/api/tasks/f/retry", json={})
    assert (retried.status_code, retried.json()["status"], retried.json()["error"]) == (
        200,
        "pending",
        None,
    )
    await run_and_report(api, "f", AttemptOutcome.COMPLETED, result="second time lucky")
    task = (await api.get("/api/tasks/f")).json()
    assert (task["status"], task["attempt"], task["result"]) == (
        "completed",
        2,
        "second time lucky",
    )
    assert (await api.post("/api/tasks/f/retry", json={})).status_code == 409


async def test_retrying_a_task_whose_dependency_failed_is_refused(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json={"task_id": "parent", "task_type": "fail", "max_retries": 0})
    await api.post(
        "/api/tasks", json={"task_id": "kid", "task_type": "echo", "dependencies": ["parent"]}
    )
    await run_and_report(api, "parent", AttemptOutcome.ERROR, error="x")
    response = await api.post("/api/tasks/kid/retry", json={})
    assert response.status_code == 409
    assert "parent" in response.json()["detail"][0]["msg"]


async def test_graph_shows_ancestors_and_descendants(api: httpx.AsyncClient) -> None:
    body = {
        "tasks": [
            {"task_id": "a", "task_type": "echo"},
            {"task_id": "b", "task_type": "echo", "dependencies": ["a"]},
            {"task_id": "c", "task_type": "echo", "dependencies": ["a"]},
            {"task_id": "d", "task_type": "echo", "dependencies": ["b", "c"]},
            {"task_id": "lonely", "task_type": "echo"},
        ]
    }
    await api.post("/api/tasks/batch", json=body)
    graph = (await api.get("/api/tasks/b/graph")).json()
    assert sorted(n["task_id"] for n in graph["nodes"]) == ["a", "b", "d"]
    assert sorted((e["from"], e["to"]) for e in graph["edges"]) == [("a", "b"), ("b", "d")]
    assert (await api.get("/api/tasks/zzz/graph")).status_code == 404


async def test_queues_flag_types_no_live_worker_can_run(api: httpx.AsyncClient) -> None:
    await api.post("/api/workers/register", json={"worker_id": "w", "capabilities": ["echo"]})
    await api.post(
        "/api/tasks/batch", json={"tasks": [{"task_type": "echo"}, {"task_type": "orphan"}]}
    )
    queues = {q["task_type"]: q for q in (await api.get("/api/queues")).json()}
    assert queues["echo"] == {"task_type": "echo", "ready": 1, "live_workers": 1, "routable": True}
    assert queues["orphan"]["routable"] is False


def test_claim_budget_never_exceeds_free_slots_and_backs_off_under_cpu_pressure() -> None:
    assert claim_budget(free_slots=5, max_slots=5, cpu_percent=10) == 5
    assert claim_budget(free_slots=2, max_slots=5, cpu_percent=None) == 2
    assert claim_budget(free_slots=5, max_slots=10, cpu_percent=10) == 5
    assert claim_budget(free_slots=10, max_slots=10, cpu_percent=95) == 5
    assert claim_budget(free_slots=4, max_slots=10, cpu_percent=95) == 0
    assert claim_budget(free_slots=1, max_slots=1, cpu_percent=99) == 1
