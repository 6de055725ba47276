"""Your own task types: decorate a function with @task and start a worker with
`python worker/worker_node.py --worker-id w1 --tasks examples.custom_tasks`.

- `async def` handlers run on the worker's event loop (use them for I/O).
- plain `def` handlers run in a thread pool.
- `mode="process"` runs CPU-heavy functions in a process pool (they must live at module level).
A handler takes `(payload)` or `(payload, context)`; `context` carries task_id, attempt,
correlation_id and `dependency_results` (the results of the tasks this one depends on).
Return anything JSON-serialisable; raise TaskFailure("message") to fail with that message."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.task_executor import TaskContext, TaskFailure, task


@task("greet")
async def greet(payload: dict[str, Any]) -> dict[str, str]:
    await asyncio.sleep(0)  # stands in for real I/O: an HTTP call, a database query
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise TaskFailure("payload.name must be a non-empty string")
    return {"greeting": f"Hello, {name}!"}


@task("sum_inputs")
def sum_inputs(payload: dict[str, Any], context: TaskContext) -> dict[str, float]:
    """Adds up the `total` of every dependency's result: a fan-in step of a DAG."""
    totals = [r.get("total", 0) for r in context.dependency_results.values() if isinstance(r, dict)]
    return {"total": float(sum(totals)) + float(payload.get("extra", 0))}


@task("fibonacci", mode="process")
def fibonacci(payload: dict[str, Any]) -> dict[str, int]:
    n = int(payload.get("n", 30))
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return {"n": n, "value": a}
