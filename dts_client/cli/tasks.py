"""Task commands: submit, submit-batch, get, list, wait, cancel, retry, graph, logs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.models.task import TaskPublic, TaskStatus
from dts_client.cli import render
from dts_client.cli.render import Output
from dts_client.client import Client

OK, FAILED = 0, 1


class UsageError(Exception):
    """Bad arguments or input files: exit code 2."""


def read_json(text: str) -> Any:
    """A JSON value from the argument, or from a file when it starts with '@' ('@-': stdin)."""
    source = text
    if text.startswith("@"):
        name = text[1:]
        try:
            source = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from exc
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def read_payload(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    payload = read_json(text)
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object")
    return payload


def read_specs(name: str) -> list[dict[str, Any]]:
    """A batch file: a JSON list of task specs, `{"tasks": [...]}`, or JSON Lines."""
    if name.endswith(".jsonl"):
        try:
            lines = Path(name).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from exc
        specs: Any = [read_json(line) for line in lines if line.strip()]
    else:
        found = read_json("@" + name)
        specs = found.get("tasks") if isinstance(found, dict) else found
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise UsageError(f"{name}: expected a list of task objects (or JSON Lines)")
    if not specs:
        raise UsageError(f"{name}: no tasks")
    return specs


def outcome(tasks: Sequence[TaskPublic]) -> int:
    return OK if all(t.status == TaskStatus.COMPLETED for t in tasks) else FAILED


def wait_for(
    client: Client, out: Output, ids: list[str], timeout: float | None
) -> list[TaskPublic]:
    """Wait with a progress bar on stderr for more than one task (people only: not with --json,
    nor when stderr is not a terminal)."""
    if len(ids) == 1 or out.as_json or not out.errors.is_terminal:
        return client.wait(ids, timeout=timeout)
    columns = (TextColumn("waiting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out.errors, transient=True) as bar:
        job = bar.add_task("wait", total=len(ids))
        return client.wait(
            ids, timeout=timeout, progress=lambda done, total: bar.update(job, completed=done)
        )


def submit(client: Client, out: Output, args: argparse.Namespace) -> int:
    task = client.submit(
        args.task_type,
        read_payload(args.payload),
        task_id=args.task_id,
        priority=args.priority,
        dependencies=args.depends_on,
        timeout=args.timeout,
        max_retries=args.max_retries,
        delay_seconds=args.delay,
    )
    if not args.wait:
        out.show(task, f"submitted {task.task_id} ({task.status.value})")
        return OK
    (task,) = wait_for(client, out, [task.task_id], args.wait_timeout)
    out.show(task, render.task_detail(task))
    return outcome([task])


def submit_batch(client: Client, out: Output, args: argparse.Namespace) -> int:
    tasks = client.submit_many(read_specs(args.file))
    if args.wait:
        tasks = wait_for(client, out, [t.task_id for t in tasks], args.wait_timeout)
        out.show(tasks, render.tasks_table(tasks))
        return outcome(tasks)
    out.show(tasks, render.tasks_table(tasks, title=f"{len(tasks)} tasks submitted"))
    return OK


def get(client: Client, out: Output, args: argparse.Namespace) -> int:
    task = client.get(args.task_id)
    out.show(task, render.task_detail(task))
    return OK


def list_tasks(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    found = list(
        client.list(args.status, args.task_type, args.worker_id, limit=args.limit, page_size=500)
    )
    out.show(found, render.tasks_table(found))
    return OK


def wait(client: Client, out: Output, args: argparse.Namespace) -> int:
    tasks = wait_for(client, out, args.task_ids, args.timeout)
    out.show(tasks, render.tasks_table(tasks))
    return outcome(tasks)


def cancel(client: Client, out: Output, args: argparse.Namespace) -> int:
    task = client.cancel(args.task_id)
    out.show(task, f"{task.task_id}: {task.status.value}")
    return OK


def retry(client: Client, out: Output, args: argparse.Namespace) -> int:
    task = client.retry(args.task_id)
    out.show(task, f"{task.task_id}: {task.status.value} again")
    return OK


def graph(client: Client, out: Output, args: argparse.Namespace) -> int:
    found = client.graph(args.task_id)
    table = Table(title=f"graph of {args.task_id}", title_justify="left", header_style="bold")
    for column in ("TASK ID", "TYPE", "STATUS", "DEPENDS ON"):
        table.add_column(column)
    parents: dict[str, list[str]] = {}
    for edge in found.edges:
        parents.setdefault(edge.to, []).append(edge.from_)
    for node in found.nodes:
        deps = ", ".join(parents.get(node.task_id, []))
        table.add_row(node.task_id, node.task_type, render.status(node.status.value), deps)
    out.show(found, table)
    return OK


def logs(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.follow:
        for line in client.follow_logs(args.task_id, attempt=args.attempt):
            if out.as_json:
                out.json(line)
            else:
                out.console.print(render.log_line(line), markup=False)
        return OK
    page = client.logs(args.task_id, attempt=args.attempt)
    if out.as_json:
        out.json(page)
        return OK
    for line in page.lines:
        out.console.print(render.log_line(line), markup=False)
    return OK
