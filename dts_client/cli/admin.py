"""Commands about the system rather than one task: workers, queues, watch, keys, schedules."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.live import Live

from app.models.task import TaskStatus
from dts_client.cli import render
from dts_client.cli.render import Output
from dts_client.cli.tasks import OK, UsageError, read_payload
from dts_client.client import Client

RECENT_FAILURES = 10


def workers(client: Client, out: Output, args: argparse.Namespace) -> int:
    found = client.workers()
    out.show(found, render.workers_table(found))
    return OK


def queues(client: Client, out: Output, args: argparse.Namespace) -> int:
    found = client.queues()
    out.show(found, render.queues_table(found))
    return OK


def _view(client: Client) -> tuple[dict[str, Any], Group]:
    queues, live = client.queues(), client.workers()
    failed = list(client.list(TaskStatus.FAILED, limit=RECENT_FAILURES))
    data = {"queues": queues, "workers": live, "recent_failures": failed}
    title = f"recent failures (last {RECENT_FAILURES})"
    view = Group(
        render.queues_table(queues),
        render.workers_table(live),
        render.tasks_table(failed, title=title),
        f"[dim]{datetime.now():%H:%M:%S} · Ctrl-C to stop[/]",
    )
    return data, view


def watch(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    data, view = _view(client)
    if args.once or out.as_json:
        out.show({k: render.jsonable(v) for k, v in data.items()}, view)
        return OK
    try:
        with Live(view, console=out.console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(_view(client)[1])
    except KeyboardInterrupt:
        return OK


def keys(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.action == "create":
        expires = datetime.fromisoformat(args.expires_at) if args.expires_at else None
        created = client.create_key(
            args.name, args.scopes, expires_at=expires, worker_id=args.worker_id
        )
        note = f"key {created.key_id} created; its secret (shown once):\n{created.key}"
        out.show(created, note)
    elif args.action == "list":
        found = client.keys()
        rows = [k.model_dump(mode="json") | {"scopes": ",".join(k.scopes)} for k in found]
        columns = ("key_id", "name", "scopes", "worker_id", "expires_at", "revoked")
        out.show(found, render.mapping_table(rows, columns, "keys"))
    else:
        client.revoke_key(args.key_id)
        out.show({"key_id": args.key_id, "revoked": True}, f"key {args.key_id} revoked")
    return OK


def schedules(client: Client, out: Output, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        found = client.schedules()
        rows = [_schedule_row(s.model_dump(mode="json")) for s in found]
        columns = ("schedule_id", "when", "task_type", "enabled", "next_fire_at")
        out.show(found, render.mapping_table(rows, columns, "schedules"))
        return OK
    if action == "create":
        return _create_schedule(client, out, args)
    if action == "trigger":
        task = client.trigger_schedule(args.schedule_id)
        out.show(task, f"triggered {args.schedule_id}: task {task.task_id}")
        return OK
    if action == "delete":
        client.delete_schedule(args.schedule_id)
        out.show({"schedule_id": args.schedule_id, "deleted": True}, "deleted")
        return OK
    if action == "get":
        schedule = client.get_schedule(args.schedule_id)
    else:
        schedule = client.update_schedule(args.schedule_id, enabled=action == "resume")
    row = _schedule_row(schedule.model_dump(mode="json"))
    out.show(schedule, render.mapping_table([row], list(row), args.schedule_id))
    return OK


def _create_schedule(client: Client, out: Output, args: argparse.Namespace) -> int:
    schedule = client.create_schedule(
        args.schedule_id,
        args.task_type,
        read_payload(args.payload),
        cron=args.cron,
        interval_seconds=args.every,
        timezone=args.timezone,
        catch_up=args.catch_up,
        priority=args.priority,
        max_concurrent_runs=args.max_concurrent_runs,
        enabled=False if args.disabled else None,
    )
    out.show(schedule, f"schedule {schedule.schedule_id}: next fire {schedule.next_fire_at}")
    return OK


def _schedule_row(data: dict[str, Any]) -> dict[str, Any]:
    every = data.get("interval_seconds")
    when = data.get("cron") or (f"every {every} s" if every else "")
    fires = data.pop("last_fires", [])
    return {
        "schedule_id": data["schedule_id"],
        "when": when,
        "task_type": data["task"]["task_type"],
        "enabled": data["enabled"],
        "next_fire_at": data.get("next_fire_at"),
        **({"last_fires": len(fires)} if fires else {}),
    }
