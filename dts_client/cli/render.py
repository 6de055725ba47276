"""What the command line prints: rich tables for people, JSON for scripts (`--json`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from app.models.logs import LogLine
from app.models.task import QueueInfo, TaskPublic
from app.models.worker import WorkerPublic

PIPED_WIDTH = 160
STATUS_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        # Piped into a file or another program, rich would assume 80 columns and squeeze the
        # tables: take a wide page instead, unless COLUMNS says otherwise.
        piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        self.console = Console(highlight=False, width=PIPED_WIDTH if piped else None)
        self.errors = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(jsonable(value), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def show(self, value: Any, table: RenderableType) -> None:
        """`value` as JSON with --json, else `table`."""
        if self.as_json:
            self.json(value)
        else:
            self.console.print(table)

    def error(self, message: str, payload: dict[str, Any] | None = None) -> None:
        if self.as_json and payload is not None:
            sys.stderr.write(json.dumps(payload, ensure_ascii=False) + "\n")
        else:
            self.errors.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def when(moment: datetime | None, *, short: bool = False) -> str:
    if moment is None:
        return ""
    return moment.strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")


def status(value: str) -> str:
    return f"[{STATUS_STYLE.get(value, 'white')}]{value}[/]"


def short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def tasks_table(tasks: Iterable[TaskPublic], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    for column in ("TASK ID", "TYPE", "STATUS", "PRI", "TRY", "WORKER", "CREATED", "ERROR"):
        # Ids and statuses whole on one line; the other columns wrap in what width is left.
        table.add_column(column, no_wrap=column in ("TASK ID", "STATUS"))
    for t in tasks:
        table.add_row(
            t.task_id,
            t.task_type,
            status(t.status.value),
            str(t.priority),
            str(t.attempt),
            t.worker_id or "",
            when(t.created_at, short=True),
            escape(short(t.error, 40)),
        )
    return table


def task_detail(task: TaskPublic) -> Table:
    table = Table(show_header=False, title=f"task {task.task_id}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("type", task.task_type),
        ("status", status(task.status.value)),
        ("priority", str(task.priority)),
        ("attempt", f"{task.attempt} (max retries {task.max_retries})"),
        ("worker", task.worker_id or ""),
        ("created", when(task.created_at)),
        ("started", when(task.started_at)),
        ("completed", when(task.completed_at)),
        ("dependencies", ", ".join(task.dependencies)),
        ("dependents", ", ".join(task.dependents or [])),
        ("payload", json.dumps(task.payload)),
        ("result", "" if task.result is None else json.dumps(task.result)),
        ("error", task.error or ""),
    ]
    for name, value in rows:
        table.add_row(name, value if name == "status" else escape(value))
    for attempt in task.attempts or []:
        outcome = f"{attempt.outcome.value} on {attempt.worker_id or '?'}"
        table.add_row(f"attempt {attempt.attempt}", escape(f"{outcome} {short(attempt.error)}"))
    return table


def workers_table(workers: Sequence[WorkerPublic]) -> Table:
    table = Table(title="workers", title_justify="left", header_style="bold")
    for column in ("WORKER", "STATUS", "TASKS", "CAPABILITIES", "HOST", "LAST HEARTBEAT"):
        table.add_column(column)
    for w in workers:
        style = "green" if w.status.value != "offline" else "dim"
        table.add_row(
            f"[{style}]{w.worker_id}[/]",
            w.status.value,
            f"{len(w.current_tasks)}/{w.max_concurrent_tasks}",
            short(", ".join(w.capabilities), 40),
            escape(w.hostname or ""),
            when(w.last_heartbeat),
        )
    return table


def queues_table(queues: Sequence[QueueInfo]) -> Table:
    table = Table(title="queues", title_justify="left", header_style="bold")
    for column in ("TASK TYPE", "READY", "LIVE WORKERS", "ROUTABLE"):
        table.add_column(column)
    for q in queues:
        routable = "yes" if q.routable else "[red]no[/]"
        table.add_row(q.task_type, str(q.ready), str(q.live_workers), routable)
    return table


def log_line(line: LogLine) -> str:
    stream = "" if line.stream.value == "log" else f" {line.stream.value}"
    return f"{line.at:%H:%M:%S} #{line.attempt} {line.level}{stream}: {line.message}"


def mapping_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column.upper().replace("_", " "))
    for row in rows:
        table.add_row(*("" if row.get(c) is None else escape(str(row.get(c))) for c in columns))
    return table
