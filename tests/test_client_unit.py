"""The client's pure parts: the retry policy, the endpoint configuration, the typed errors, and
the wait operation driven step by step (operations are generators of HTTP calls)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.models.task import TaskPublic, TaskStatus
from app.utils.embedded_servers import free_port
from dts_client import Client, Invalid, NotFound, TaskFailed, Unavailable
from dts_client import operations as ops
from dts_client.config import DEFAULT_API_URL, Endpoint, read_dotenv, resolve
from dts_client.errors import api_error
from dts_client.retry import Attempts, RetryPolicy, retry_after_seconds


def attempts(idempotent: bool = True, **policy: Any) -> Attempts:
    return Attempts(RetryPolicy(**policy), idempotent, rng=random.Random(1))


def test_429_and_503_wait_as_told_other_statuses_are_final() -> None:
    tries = attempts()
    assert tries.after_status(503, "2") == 2.0
    assert tries.after_status(429, None) is not None
    assert tries.after_status(500, "1") is None
    assert tries.after_status(404, None) is None


def test_the_budget_bounds_attempts_and_waiting() -> None:
    tries = attempts(attempts=3, budget=100)
    assert [tries.after_status(503, "1") for _ in range(3)] == [1.0, 1.0, None]
    patient = attempts(attempts=10, budget=5)
    assert [patient.after_status(429, "3") for _ in range(2)] == [3.0, None]


def test_a_lost_connection_is_retried_only_when_idempotent() -> None:
    lost = httpx.ReadError("connection reset")
    refused = httpx.ConnectError("connection refused")
    assert attempts(idempotent=False).after_transport_error(lost) is None
    assert attempts(idempotent=True).after_transport_error(lost) is not None
    assert attempts(idempotent=False).after_transport_error(refused) is not None  # never sent


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    tries = attempts(attempts=10, budget=100, base=1.0, cap=4.0)
    delays = [tries.after_status(503, None) for _ in range(5)]
    for delay, ceiling in zip(delays, [1, 2, 4, 4, 4], strict=True):
        assert delay is not None and ceiling / 2 <= delay <= ceiling


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = time.time()
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert retry_after_seconds("7") == 7.0
    assert 28 <= (retry_after_seconds(date, now=now) or 0) <= 31
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_endpoint_from_arguments_then_environment_then_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text('# comment\nexport API_URL="http://file:1/"\nAPI_KEY=from-file # note\n')
    assert read_dotenv(dotenv) == {"API_URL": "http://file:1/", "API_KEY": "from-file"}
    monkeypatch.delenv("API_URL", raising=False)
    monkeypatch.delenv("API_KEY", raising=False)
    assert resolve(dotenv=dotenv) == Endpoint("http://file:1", "from-file", ("http://file:1",))
    monkeypatch.setenv("API_URL", "http://env:2, http://env:3/")
    failover = resolve(dotenv=dotenv)  # a fail-over list, like the workers' --api-url a,b
    assert (failover.api_url, failover.api_urls) == (
        "http://env:2",
        ("http://env:2", "http://env:3"),
    )
    assert resolve("http://arg:4", "k", dotenv=dotenv).api_url == "http://arg:4"
    monkeypatch.delenv("API_URL")
    assert resolve(dotenv=tmp_path / "missing").api_url == DEFAULT_API_URL


def test_errors_are_typed_by_status_with_the_field() -> None:
    body = b'{"detail": [{"loc": ["body", "tasks", 2, "priority"], "msg": "too big", "type": "x"}]}'
    invalid = api_error(422, body)
    assert isinstance(invalid, Invalid) and invalid.field == ("body", "tasks", 2, "priority")
    assert "body.tasks.2.priority: too big" in str(invalid)
    assert isinstance(api_error(404, b'{"detail": []}'), NotFound)
    down = api_error(503, b"<html>proxy error</html>")
    assert isinstance(down, Unavailable) and "proxy error" in str(down)


def task_json(task_id: str, status: TaskStatus, error: str | None = None) -> bytes:
    now = datetime.now(UTC)
    task = TaskPublic(
        task_id=task_id,
        task_type="echo",
        status=status,
        priority=1,
        payload={},
        worker_id=None,
        attempt=1,
        max_retries=0,
        timeout=60,
        created_at=now,
        scheduled_at=None,
        started_at=None,
        completed_at=None,
        error=error,
    )
    return task.model_dump_json().encode()


def drive(op: ops.Op[Any], answers: dict[str, list[TaskStatus]]) -> tuple[list[str], Any]:
    """Run an operation by hand: each GET of a task answers its next status."""
    asked: list[str] = []
    reply: Any = None
    while True:
        try:
            step = op.send(reply)
        except StopIteration as stop:
            return asked, stop.value
        reply = None
        if isinstance(step, ops.Call):
            task_id = step.path.rsplit("/", 1)[1]
            asked.append(task_id)
            reply = task_json(task_id, answers[task_id].pop(0), "boom")


def test_wait_reads_each_task_once_final_and_stops_a_round_at_the_first_running() -> None:
    done, running = TaskStatus.COMPLETED, TaskStatus.RUNNING
    answers = {"a": [running, done], "b": [done], "c": [running, done]}
    op = ops.wait(["a", "b", "c", "a"], timeout=None, poll=0.001, raise_on_failure=False)
    asked, tasks = drive(op, answers)
    assert asked == ["a", "a", "b", "c", "c"]
    assert [t.task_id for t in tasks] == ["a", "b", "c"]


def test_wait_raises_for_a_failed_task_when_asked() -> None:
    op = ops.wait(["a"], timeout=None, poll=0.001, raise_on_failure=True)
    with pytest.raises(TaskFailed, match="task a failed: boom") as failed:
        drive(op, {"a": [TaskStatus.FAILED]})
    assert failed.value.task.error == "boom"


def test_an_unreachable_api_is_unavailable_after_the_budget() -> None:
    policy = RetryPolicy(attempts=3, budget=1.0, base=0.01)
    with Client(f"http://127.0.0.1:{free_port()}", retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="ConnectError"):
            client.get("anything")
        assert time.monotonic() - started < 1.0
