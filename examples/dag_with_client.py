"""A small DAG with the Python client: two tasks, and a third that depends on both. Submits them
in one batch, waits with a progress bar, then prints each task's result and log lines.

    bash scripts/run.sh                      # the stack, in another terminal
    python examples/dag_with_client.py       # API_URL and API_KEY from the environment or .env

Exit code 0 when all three completed, 1 otherwise."""

from __future__ import annotations

import json
import sys
import uuid

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from dts_client import Client, TaskPublic, TaskStatus


def dag(run: str) -> list[dict[str, object]]:
    """`report` starts only when `clean` and `stats` have completed (built-in task types)."""
    clean, stats, report = (f"dag-{run}-{name}" for name in ("clean", "stats", "report"))
    return [
        {"task_id": clean, "task_type": "processing", "payload": {"data": "  Hello   DAG  "}},
        {"task_id": stats, "task_type": "analysis", "payload": {"data": [3, 1, 4, 1, 5, 9]}},
        {
            "task_id": report,
            "task_type": "log_lines",
            "payload": {"parameters": {"lines": 2}},
            "dependencies": [clean, stats],
            "priority": 5,
        },
    ]


def wait_with_progress(client: Client, ids: list[str], console: Console) -> list[TaskPublic]:
    columns = (TextColumn("running the DAG"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("dag", total=len(ids))
        return client.wait(
            ids, timeout=120, progress=lambda done, total: bar.update(job, completed=done)
        )


def show(client: Client, tasks: list[TaskPublic], console: Console) -> None:
    for task in tasks:
        result = json.dumps(task.result) if task.result is not None else task.error
        console.print(f"[bold]{task.task_id}[/] {task.task_type}: {task.status.value} -> {result}")
        for line in client.logs(task.task_id).lines:
            console.print(f"    [{line.stream.value}] {line.message}", markup=False)


def main() -> int:
    console = Console(stderr=False)
    with Client() as client:
        tasks = client.submit_many(dag(uuid.uuid4().hex[:8]))
        console.print(f"submitted {len(tasks)} tasks to {client.endpoint.api_url}")
        done = wait_with_progress(client, [t.task_id for t in tasks], console)
        show(client, done, console)
    return 0 if all(t.status == TaskStatus.COMPLETED for t in done) else 1


if __name__ == "__main__":
    sys.exit(main())
