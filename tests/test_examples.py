"""The documented example of custom task types works as the README says."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from app.models.task import AttemptOutcome, TaskToRun
from worker.task_executor import REGISTRY, TaskExecutor


@pytest.fixture
def executor() -> Iterator[TaskExecutor]:
    importlib.import_module("examples.custom_tasks")
    engine = TaskExecutor(pool_size=2)
    yield engine
    engine.shutdown()


def job(task_type: str, payload: dict[str, object], **extra: object) -> TaskToRun:
    return TaskToRun(
        task_id="x",
        task_type=task_type,
        payload=payload,
        attempt=1,
        timeout=30,
        correlation_id=None,
        **extra,
    )


async def test_example_handlers_register_with_their_modes(executor: TaskExecutor) -> None:
    assert {REGISTRY[n].mode for n in ("greet", "sum_inputs", "fibonacci")} == {
        "async",
        "thread",
        "process",
    }


async def test_example_handlers_run(executor: TaskExecutor) -> None:
    greeting = await executor.execute(job("greet", {"name": "Ada"}))
    assert greeting.result == {"greeting": "Hello, Ada!"}
    refused = await executor.execute(job("greet", {}))
    assert (refused.outcome, refused.error) == (
        AttemptOutcome.ERROR,
        "payload.name must be a non-empty string",
    )
    total = await executor.execute(
        job("sum_inputs", {"extra": 1}, dependency_results={"a": {"total": 2}})
    )
    assert total.result == {"total": 3.0}
    fib = await executor.execute(job("fibonacci", {"n": 10}))
    assert fib.result == {"n": 10, "value": 55}
