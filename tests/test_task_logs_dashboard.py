"""The task detail page shows a task's logs per attempt, and a running task's log as it grows
(Streamlit's AppTest against a real API process, as in tests/test_dashboard.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from redis.asyncio import Redis

from app.services.message_queue import RedisQueue
from app.utils.embedded_servers import ValkeyServer
from tests.test_dashboard import PREFIX, api, dashboard, live_api, submit, unique

__all__ = ["api", "live_api"]  # the fixtures, shared with the dashboard's own tests


def start_as_worker(api: httpx.Client, redis_url: str, task_type: str) -> tuple[str, int]:
    worker_id = unique("w")
    api.post("/api/workers/register", json={"worker_id": worker_id, "capabilities": [task_type]})

    async def claim() -> list[str]:
        redis = Redis.from_url(redis_url)
        try:
            return await RedisQueue(redis, prefix=PREFIX).claim(worker_id, [task_type], 1)
        finally:
            await redis.aclose()

    started = api.post(f"/api/workers/{worker_id}/exchange", json={"claims": asyncio.run(claim())})
    (job,) = started.json()["started"]
    return worker_id, job["attempt"]


def ship(api: httpx.Client, worker_id: str, task_id: str, *messages: str, **body: Any) -> None:
    lines = [
        {
            "task_id": task_id,
            "attempt": 1,
            "line": number,
            "at": f"2026-01-01T10:00:0{number}Z",
            "level": "INFO",
            "stream": "stdout",
            "message": message,
        }
        for number, message in enumerate(messages)
    ]
    answer = api.post(f"/api/workers/{worker_id}/exchange", json={"logs": lines, **body})
    assert answer.status_code == 200, answer.text


def code_blocks(at: Any) -> str:
    return "\n".join(str(block.value) for block in at.code)


def test_task_detail_shows_the_logs_of_a_running_then_finished_task(
    api: httpx.Client, valkey: ValkeyServer
) -> None:
    kind = unique("logs")
    task_id = submit(api, task_type=kind)["task_id"]
    at = dashboard("detail", task_id=task_id)
    assert "Not started yet: no logs." in "\n".join(c.value for c in at.caption)

    worker_id, attempt = start_as_worker(api, valkey.url, kind)
    assert attempt == 1
    ship(api, worker_id, task_id, "starting")
    at = dashboard("detail", task_id=task_id)
    assert at.selectbox[0].options == ["attempt 1 (latest)"]
    assert code_blocks(at) == "10:00:00 stdout  starting"

    report = {"task_id": task_id, "attempt": 1, "outcome": "completed", "result": 1}
    ship(api, worker_id, task_id, "starting", "finished", reports=[report])
    at = dashboard("detail", task_id=task_id)
    assert "completed" in at.subheader[0].value
    assert code_blocks(at).splitlines() == [
        "10:00:00 stdout  starting",
        "10:00:01 stdout  finished",
    ]


def test_task_detail_says_when_an_attempt_wrote_nothing(
    api: httpx.Client, valkey: ValkeyServer
) -> None:
    kind = unique("quiet")
    task_id = submit(api, task_type=kind)["task_id"]
    start_as_worker(api, valkey.url, kind)
    at = dashboard("detail", task_id=task_id)
    assert "Nothing printed or logged in this attempt." in "\n".join(c.value for c in at.caption)
    assert not at.code
