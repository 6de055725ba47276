"""Group commit of single submissions (app.services.group_submit) through the real API on both
stores: concurrent requests share transactions, yet each gets its own answer, and one bad
request never costs the others theirs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import event

from app.database.connection import Database


async def post_all(api: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    return list(await asyncio.gather(*(api.post("/api/tasks", json=b) for b in bodies)))


async def test_concurrent_submissions_share_transactions(api: httpx.AsyncClient) -> None:
    db: Database = api.app.state.db  # type: ignore[attr-defined]
    transactions = 0

    def count(*_args: Any) -> None:
        nonlocal transactions
        transactions += 1

    event.listen(db.engine.sync_engine, "commit", count)
    answers = await post_all(api, [{"task_type": "echo", "payload": {"n": n}} for n in range(60)])
    assert [a.status_code for a in answers] == [201] * 60
    assert len({a.json()["task_id"] for a in answers}) == 60
    assert [a.json()["payload"] for a in answers] == [{"n": n} for n in range(60)]
    assert transactions < 60, transactions


async def test_a_bad_request_in_a_group_fails_alone(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json={"task_id": "taken", "task_type": "echo"})
    bodies: list[dict[str, Any]] = [{"task_type": "echo", "payload": {"n": n}} for n in range(20)]
    bodies[5] = {"task_type": "echo", "dependencies": ["nobody"]}
    bodies[11] = {"task_id": "taken", "task_type": "echo", "priority": 9}
    bodies[17] = {"task_id": "taken", "task_type": "echo"}  # identical: the existing task
    answers = await post_all(api, bodies)
    codes = [a.status_code for a in answers]
    assert (codes[5], codes[11], codes[17]) == (422, 409, 200)
    assert [c for i, c in enumerate(codes) if i not in (5, 11, 17)] == [201] * 17
    assert answers[5].json()["detail"][0]["loc"] == ["body", "dependencies", 0]
    assert answers[11].json()["detail"][0]["loc"] == ["body", "task_id"]
    listed = (await api.get("/api/tasks", params={"limit": 100})).json()
    assert len(listed["tasks"]) == 18  # "taken" and the 17 new ones; nothing half-written


async def test_the_same_new_id_twice_at_once_is_one_task(api: httpx.AsyncClient) -> None:
    body = {"task_id": "once", "task_type": "echo", "payload": {"x": 1}}
    answers = await post_all(api, [body, body, body])
    assert sorted(a.status_code for a in answers) == [200, 200, 201]
    assert {a.json()["task_id"] for a in answers} == {"once"}
