"""Per-task logs through the API on SQLite and PostgreSQL: lines shipped with the worker
exchange are stored once, in order, apart from the reports (a line the store refuses never
costs a report), and `GET /api/tasks/{id}/logs` pages them by attempt and `after`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.database import task_logs
from app.models.logs import SEQ_PER_ATTEMPT, TaskLogs
from app.services.message_queue import RedisQueue

WORKER = "log-worker"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def line(task_id: str, attempt: int, number: int, message: str, **fields: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "attempt": attempt,
        "line": number,
        "at": (T0 + timedelta(seconds=number)).isoformat(),
        "level": fields.get("level", "INFO"),
        "stream": fields.get("stream", "stdout"),
        "message": message,
    }


async def exchange(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await api.post(f"/api/workers/{WORKER}/exchange", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def start(api: httpx.AsyncClient, *task_ids: str, **spec: Any) -> None:
    for task_id in task_ids:
        body = {"task_id": task_id, "task_type": "echo", **spec}
        created = await api.post("/api/tasks", json=body)
        assert created.status_code == 201
    await claim_and_start(api, *task_ids)


async def claim_and_start(api: httpx.AsyncClient, *task_ids: str) -> None:
    queue: RedisQueue = api.app.state.queue  # type: ignore[attr-defined]
    claims = await queue.claim(WORKER, ["echo"], len(task_ids))
    answer = await exchange(api, claims=claims)
    assert sorted(t["task_id"] for t in answer["started"]) == sorted(task_ids)


async def logs(api: httpx.AsyncClient, task_id: str, **params: Any) -> TaskLogs:
    response = await api.get(f"/api/tasks/{task_id}/logs", params=params)
    assert response.status_code == 200, response.text
    return TaskLogs.model_validate(response.json())


async def test_lines_come_back_in_order_by_attempt_and_after(api: httpx.AsyncClient) -> None:
    await start(api, "t1", max_retries=0)
    # A running task's lines, shipped alone (the periodic flush), out of order in the batch.
    await exchange(api, logs=[line("t1", 1, 1, "second"), line("t1", 1, 0, "first")])
    running = await logs(api, "t1")
    assert [entry.message for entry in running.lines] == ["first", "second"]
    assert [entry.seq for entry in running.lines] == [SEQ_PER_ATTEMPT, SEQ_PER_ATTEMPT + 1]
    assert running.next_after == SEQ_PER_ATTEMPT + 1
    assert running.lines[0].at == T0
    # The report with the rest of the lines, in the same exchange; then a second attempt's.
    failed = {"task_id": "t1", "attempt": 1, "outcome": "error", "error": "bad"}
    third = line("t1", 1, 2, "third", level="WARNING", stream="log")
    assert (await exchange(api, reports=[failed], logs=[third]))["accepted"] == ["t1"]
    assert (await api.post("/api/tasks/t1/retry", json={})).status_code == 200
    await claim_and_start(api, "t1")
    report = {"task_id": "t1", "attempt": 2, "outcome": "completed", "result": 1}
    answer = await exchange(api, reports=[report], logs=[line("t1", 2, 0, "a2")])
    assert answer["accepted"] == ["t1"]
    assert (await api.get("/api/tasks/t1")).json()["status"] == "completed"
    after = await logs(api, "t1", after=running.next_after)
    assert [(e.attempt, e.level, e.stream, e.message) for e in after.lines] == [
        (1, "WARNING", "log", "third"),
        (2, "INFO", "stdout", "a2"),
    ]
    assert after.next_after == 2 * SEQ_PER_ATTEMPT
    first = await logs(api, "t1", attempt=1)
    assert [e.message for e in first.lines] == ["first", "second", "third"]
    second = await logs(api, "t1", attempt=2, after=0)
    assert [e.message for e in second.lines] == ["a2"]
    nothing_new = await logs(api, "t1", after=after.next_after)
    assert (nothing_new.lines, nothing_new.next_after) == ([], after.next_after)
    page = await logs(api, "t1", limit=2)
    assert [e.message for e in page.lines] == ["first", "second"]
    assert page.next_after == SEQ_PER_ATTEMPT + 1


async def test_a_batch_sent_twice_is_stored_once(api: httpx.AsyncClient) -> None:
    await start(api, "t2")
    batch = [line("t2", 1, n, f"line {n}") for n in range(3)]
    await exchange(api, logs=batch)
    await exchange(api, logs=batch)  # the answer to the first was lost
    assert [e.message for e in (await logs(api, "t2")).lines] == ["line 0", "line 1", "line 2"]


async def test_lines_the_store_refuses_never_cost_a_report(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start(api, "t3")

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the log store is broken")

    monkeypatch.setattr(task_logs, "store", broken)
    report = {"task_id": "t3", "attempt": 1, "outcome": "completed", "result": "ok"}
    answer = await exchange(api, reports=[report], logs=[line("t3", 1, 0, "lost")])
    assert answer["accepted"] == ["t3"]
    assert (await api.get("/api/tasks/t3")).json()["status"] == "completed"
    monkeypatch.undo()
    # The last lines of an ended attempt may come after its report; NUL is made storable.
    await exchange(api, logs=[line("t3", 1, 1, "nul \x00 stored")])
    assert [e.message for e in (await logs(api, "t3")).lines] == ["nul \ufffd stored"]


async def test_only_lines_of_the_workers_own_attempts_are_stored(api: httpx.AsyncClient) -> None:
    await start(api, "t4")
    forged = [line("t4", 1, 0, "forged"), line("no-such-task", 1, 0, "x")]
    response = await api.post("/api/workers/intruder/exchange", json={"logs": forged})
    assert response.status_code == 200
    await exchange(api, logs=[line("t4", 2, 0, "an attempt that never was")])
    assert (await logs(api, "t4")).lines == []
    await exchange(api, logs=[line("t4", 1, 0, "mine"), line("no-such-task", 1, 0, "x")])
    assert [e.message for e in (await logs(api, "t4")).lines] == ["mine"]


async def test_an_unknown_task_is_404_and_a_task_without_lines_is_empty(
    api: httpx.AsyncClient,
) -> None:
    missing = await api.get("/api/tasks/nope/logs")
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["loc"] == ["path", "task_id"]
    created = await api.post("/api/tasks", json={"task_id": "quiet", "task_type": "echo"})
    assert created.status_code == 201
    quiet = await logs(api, "quiet", after=5)
    assert (quiet.task_id, quiet.lines, quiet.next_after) == ("quiet", [], 5)
    assert (await logs(api, "quiet")).next_after is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"attempt": 0}, "attempt"),
        ({"attempt": "x"}, "attempt"),
        ({"after": -1}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 5001}, "limit"),
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    api: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await api.get("/api/tasks/any/logs", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


async def test_malformed_lines_are_refused_with_the_exchange_naming_the_field(
    api: httpx.AsyncClient,
) -> None:
    bad = line("t", 1, 0, "x", stream="console")
    response = await api.post(f"/api/workers/{WORKER}/exchange", json={"logs": [bad]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:4] == ["body", "logs", 0, "stream"]
