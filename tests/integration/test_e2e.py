"""End to end: the API and two worker processes for real, on a private Valkey and SQLite."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import httpx
import pytest

from app.utils.embedded_servers import free_port
from tests.conftest import seed_example
from tests.integration.harness import FINAL, Stack, eventually, wait_for_status

pytestmark = pytest.mark.e2e


def mixed_tasks(count: int, rng: random.Random) -> list[dict[str, Any]]:
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("echo", {"data": "hello"}),
        ("sleep", {"parameters": {"seconds": 0.05}}),
        ("processing", {"data": "Some   TEXT to normalise"}),
        ("analysis", {"data": [3, 1, 4, 1, 5, 9, 2, 6]}),
        ("cpu", {"parameters": {"iterations": 2000}}),
    ]
    tasks = []
    for i in range(count):
        task_type, payload = kinds[i % len(kinds)]
        tasks.append(
            {
                "task_id": f"mix-{i}",
                "task_type": task_type,
                "payload": payload,
                "priority": rng.randint(1, 10),
            }
        )
    return tasks


async def all_final(http: httpx.AsyncClient, expected: int) -> bool:
    pending = (await http.get("/api/tasks?status=pending&limit=1")).json()["total"]
    running = (await http.get("/api/tasks?status=running&limit=1")).json()["total"]
    total = (await http.get("/api/tasks?limit=1")).json()["total"]
    return bool(total == expected and pending == 0 and running == 0)


@pytest.mark.parametrize("transport", ["http", "in the worker"])
async def test_seed_example_and_a_few_hundred_mixed_tasks(stack: Stack, transport: str) -> None:
    """Both transports (docs/architecture.md): exchanges through the API, and workers running
    their transitions on the SQLite file themselves (`--database-url`), side by side with the
    API's own writes."""
    await stack.start_api()
    options = ("--database-url", stack.database_url) if transport != "http" else ()
    workers = [stack.start_worker(f"worker-{i}", *options) for i in (1, 2)]
    await stack.wait_for_workers("worker-1", "worker-2")
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        seed = await http.post(
            "/api/tasks", json=seed_example(), headers={"X-Correlation-ID": "seed-corr-1"}
        )
        assert seed.status_code == 201
        batch = mixed_tasks(300, random.Random(42))
        answers = await asyncio.gather(*(http.post("/api/tasks", json=t) for t in batch))
        assert {a.status_code for a in answers} == {201}
        await http.post(
            "/api/tasks",
            json={
                "task_id": "boom",
                "task_type": "fail",
                "max_retries": 0,
                "payload": {"parameters": {"message": "expected failure"}},
            },
        )
        await http.post(
            "/api/tasks",
            json={"task_id": "after-boom", "task_type": "echo", "dependencies": ["boom"]},
        )
        await http.post(
            "/api/tasks",
            json={
                "task_id": "join",
                "task_type": "analysis",
                "dependencies": ["mix-0", "mix-1", "unique-task-id"],
            },
        )
        await eventually(lambda: all_final(http, 304), timeout=120, what="every task to finish")

        done = (await http.get("/api/tasks/unique-task-id")).json()
        assert done["status"] == "completed"
        assert done["result"] == {
            "normalized": "task specific data",
            "word_count": 3,
            "unique_words": 3,
        }
        assert done["worker_id"] in {"worker-1", "worker-2"}
        assert done["started_at"] <= done["completed_at"]

        completed = await _all_tasks(http, "completed")
        assert len(completed) == 302
        assert all(t["attempt"] == 1 for t in completed)
        per_worker = Counter(t["worker_id"] for t in completed)
        assert set(per_worker) == {"worker-1", "worker-2"}

        boom = (await http.get("/api/tasks/boom")).json()
        assert (boom["status"], boom["error"]) == ("failed", "expected failure")
        after = (await http.get("/api/tasks/after-boom")).json()
        assert (after["status"], after["error"]) == ("failed", "dependency 'boom' failed")
        join = (await http.get("/api/tasks/join")).json()
        assert join["result"]["inputs_from"] == ["mix-0", "mix-1", "unique-task-id"]

    # The correlation id of the submitting request follows the task into the worker's log.
    assert any("seed-corr-1" in w.log.read_text() for w in workers)
    used = "HttpTransport" if transport == "http" else "LocalTransport"
    assert all(f'"transport": "{used}"' in w.log.read_text() for w in workers)


async def _all_tasks(http: httpx.AsyncClient, status: str) -> list[dict[str, Any]]:
    page = (await http.get(f"/api/tasks?status={status}&limit=1000")).json()
    return list(page["tasks"])


async def _sigterm_during_sleep(
    stack: Stack, http: httpx.AsyncClient, worker_id: str, *, grace: float, seconds: float
) -> None:
    """Start a worker, give it a sleeping task "s", SIGTERM it once the task runs, and wait for
    it to exit cleanly."""
    worker = stack.start_worker(worker_id, "--grace-period", str(grace))
    await stack.wait_for_workers(worker_id)
    sleeping = {
        "task_id": "s",
        "task_type": "sleep",
        "payload": {"parameters": {"seconds": seconds}},
    }
    await http.post("/api/tasks", json=sleeping)
    await wait_for_status(http, "s", "running")
    worker.signal(15)
    assert await worker.wait(timeout=30) == 0


async def test_sigterm_lets_a_worker_finish_and_deregister(stack: Stack) -> None:
    await stack.start_api()
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        await _sigterm_during_sleep(stack, http, "graceful", grace=20, seconds=1.5)
        task = (await http.get("/api/tasks/s")).json()
        assert (task["status"], task["attempt"]) == ("completed", 1)
        workers = (await http.get("/api/workers")).json()["workers"]
        assert workers[0]["status"] == "offline"


async def test_sigterm_past_the_grace_period_hands_the_task_back_at_once(stack: Stack) -> None:
    await stack.start_api()
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        await _sigterm_during_sleep(stack, http, "quitter", grace=0.5, seconds=60)
        task = (await http.get("/api/tasks/s")).json()
        assert task["status"] == "pending"
        assert [a["outcome"] for a in task["attempts"]] == ["released"]
        stack.start_worker("taker")
        await wait_for_status(http, "s", "running")
        assert (await http.get("/api/tasks/s")).json()["worker_id"] == "taker"


def test_final_statuses_are_the_documented_ones() -> None:
    assert {"completed", "failed", "cancelled"} == FINAL


async def test_a_worker_given_several_api_addresses_fails_over(stack: Stack) -> None:
    """`--api-url a,b`: the first address is dead (a replica that is down); the worker registers
    and runs its tasks through the second."""
    await stack.start_api()
    dead = f"http://127.0.0.1:{free_port()}"
    worker = stack.start_worker("worker-fo", "--api-url", f"{dead},{stack.api_url}")
    await stack.wait_for_workers("worker-fo")
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        for i in range(5):
            spec = {"task_id": f"fo-{i}", "task_type": "echo", "payload": {"i": i}}
            assert (await http.post("/api/tasks", json=spec)).status_code == 201
        for i in range(5):
            await wait_for_status(http, f"fo-{i}", "completed")
        done = [(await http.get(f"/api/tasks/fo-{i}")).json() for i in range(5)]
    assert {t["worker_id"] for t in done} == {"worker-fo"}
    assert "api.fail_over" in worker.tail(200)
