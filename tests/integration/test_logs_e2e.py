"""End to end: a handler prints and logs in a real worker process, and its lines come back from
`GET /api/tasks/{id}/logs`, while it runs and after: over HTTP (SQLite) and with the worker
running its own transitions (`--database-url`, PostgreSQL)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from app.utils.embedded_servers import PostgresServer
from tests.integration.harness import Stack, eventually, wait_for_status

pytestmark = pytest.mark.e2e


def expected(lines: int) -> list[tuple[str, str, str]]:
    """(stream, level, message) of log_lines / log_lines_process, worker/builtin_tasks.py."""
    found = []
    for number in range(lines):
        found += [("stdout", "INFO", f"line {number}"), ("log", "INFO", f"logged {number}")]
    return [
        *found,
        ("stderr", "ERROR", "to stderr"),
        ("log", "WARNING", f"done after {lines} lines"),
    ]


async def read_logs(http: httpx.AsyncClient, task_id: str, **params: Any) -> dict[str, Any]:
    response = await http.get(f"/api/tasks/{task_id}/logs", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def shape(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(line["stream"], line["level"], line["message"]) for line in body["lines"]]


async def follow_a_running_task_then_read_it_whole(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        payload = {"parameters": {"lines": 8, "interval": 0.5}}
        spec = {"task_id": "talker", "task_type": "log_lines", "payload": payload}
        assert (await http.post("/api/tasks", json=spec)).status_code == 201

        async def seen_while_running() -> dict[str, Any] | None:
            body = await read_logs(http, "talker")
            status = (await http.get("/api/tasks/talker")).json()["status"]
            return body if body["lines"] and status == "running" else None

        early = await eventually(seen_while_running, timeout=30, what="lines of a running task")
        assert shape(early) == expected(8)[: len(early["lines"])]
        await wait_for_status(http, "talker", "completed")
        rest = await read_logs(http, "talker", after=early["next_after"])
        assert shape(early) + shape(rest) == expected(8)
        assert {line["attempt"] for line in rest["lines"]} == {1}
        assert shape(await read_logs(http, "talker", attempt=1)) == expected(8)

        process = {
            "task_id": "cruncher",
            "task_type": "log_lines_process",
            "payload": {"parameters": {"lines": 2}},
        }
        assert (await http.post("/api/tasks", json=process)).status_code == 201
        await wait_for_status(http, "cruncher", "completed")
        assert shape(await read_logs(http, "cruncher")) == expected(2)


async def test_logs_over_http(stack: Stack) -> None:
    await stack.start_api()
    stack.start_worker("logger-http")
    await stack.wait_for_workers("logger-http")
    await follow_a_running_task_then_read_it_whole(stack)


async def test_logs_with_the_worker_running_its_own_transitions(
    stack: Stack, postgres: PostgresServer | None
) -> None:
    if postgres is None:
        pytest.skip("needs the private PostgreSQL server")
    stack.database_url = postgres.create_database(f"logs_{uuid.uuid4().hex[:12]}")
    await stack.start_api()
    stack.start_worker("logger-db", "--database-url", stack.database_url)
    await stack.wait_for_workers("logger-db")
    await follow_a_running_task_then_read_it_whole(stack)
