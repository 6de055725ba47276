"""The `dts` command line's arguments (argparse: no dependency beyond the client's own)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from app.models.auth import Scope
from app.models.task import TaskStatus

# `command(name, help)` in build_parser: adds a subcommand with the common options.
Command = Callable[[str, str], argparse.ArgumentParser]


def _common() -> argparse.ArgumentParser:
    """Options accepted before or after the command: `dts --json get X` and `dts get X --json`.
    SUPPRESS keeps a subcommand's default from overwriting a value given before it."""
    common = argparse.ArgumentParser(add_help=False)
    sup = argparse.SUPPRESS
    common.add_argument("--json", action="store_true", default=sup, help="print JSON")
    common.add_argument("--api-url", default=sup, help="the API (env API_URL, .env)")
    common.add_argument("--api-key", default=sup, help="an API key (env API_KEY, .env)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="dts",
        parents=[common],
        description="Command line of the distributed task scheduler (docs/client.md).",
        epilog="exit codes: 0 done, 1 a task failed or was cancelled, 2 usage or invalid "
        "input, 3 API unreachable, 4 refused (not found, conflict, key), 5 wait timed out",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=text, description=text)

    _task_commands(command)
    _other_commands(command)
    _key_commands(command("keys", "manage API keys (an admin key)"), common)
    _schedule_commands(command("schedules", "manage periodic schedules"), common)
    return parser


def _task_commands(command: Command) -> None:
    submit = command("submit", "submit one task")
    submit.add_argument("task_type", metavar="TYPE")
    submit.add_argument("--payload", metavar="JSON|@FILE", help="a JSON object, or @file")
    submit.add_argument("--task-id", metavar="ID")
    submit.add_argument("--priority", type=int, metavar="N", help="1 (lowest) to 10")
    submit.add_argument("--depends-on", nargs="+", default=[], metavar="ID")
    submit.add_argument("--timeout", type=int, metavar="S", help="the task's timeout")
    submit.add_argument("--max-retries", type=int, metavar="N")
    submit.add_argument("--delay", type=float, metavar="S", help="run no sooner than S s")
    submit.add_argument("--wait", action="store_true", help="wait until it is final")
    submit.add_argument("--wait-timeout", type=float, metavar="S")

    batch = command("submit-batch", "submit many tasks in one batch (all or none)")
    batch.add_argument("file", metavar="FILE.json|FILE.jsonl", help="'-' reads stdin (JSON)")
    batch.add_argument("--wait", action="store_true", help="wait until all are final")
    batch.add_argument("--wait-timeout", type=float, metavar="S")

    command("get", "show a task").add_argument("task_id", metavar="ID")

    listing = command("list", "list tasks, newest first")
    listing.add_argument("--status", choices=[s.value for s in TaskStatus])
    listing.add_argument("--type", dest="task_type", metavar="T")
    listing.add_argument("--worker", dest="worker_id", metavar="W")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="default 50")

    wait = command("wait", "wait until tasks are final")
    wait.add_argument("task_ids", nargs="+", metavar="ID")
    wait.add_argument("--timeout", type=float, metavar="S")

    command("cancel", "cancel a task (and its dependents)").add_argument("task_id", metavar="ID")
    command("retry", "run a failed or cancelled task again").add_argument("task_id", metavar="ID")
    command("graph", "the dependency graph around a task").add_argument("task_id", metavar="ID")

    logs = command("logs", "a task's log lines")
    logs.add_argument("task_id", metavar="ID")
    logs.add_argument("--attempt", type=int, metavar="N")
    logs.add_argument("--follow", "-f", action="store_true", help="until the task is final")


def _other_commands(command: Command) -> None:
    command("workers", "list workers")
    command("queues", "ready tasks and live workers per task type")
    watch = command("watch", "a live view of queues, workers and recent failures")
    watch.add_argument("--interval", type=float, default=2.0, metavar="S")
    watch.add_argument("--once", action="store_true", help="print one view and exit")


def _key_commands(keys: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="create a key")
    create.add_argument("name")
    scopes = [s.value for s in Scope]
    create.add_argument("--scope", nargs="+", required=True, choices=scopes, dest="scopes")
    create.add_argument("--worker-id", metavar="W", help="bind a worker key to a worker id")
    create.add_argument("--expires-at", metavar="ISO-8601")
    actions.add_parser("list", parents=[common], help="list keys")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id", metavar="KEY_ID")


def _schedule_commands(schedules: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = schedules.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="list schedules")
    create = actions.add_parser("create", parents=[common], help="create a schedule")
    create.add_argument("schedule_id", metavar="ID")
    create.add_argument("task_type", metavar="TYPE")
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="'M H DOM MON DOW'")
    when.add_argument("--every", type=int, metavar="S", help="an interval in seconds")
    create.add_argument("--payload", metavar="JSON|@FILE")
    create.add_argument("--priority", type=int, metavar="N")
    create.add_argument("--timezone", metavar="TZ")
    create.add_argument("--catch-up", choices=["none", "one", "all"])
    create.add_argument("--max-concurrent-runs", type=int, metavar="N")
    create.add_argument("--disabled", action="store_true", help="create it paused")
    for name, text in [
        ("get", "show a schedule and its last fires"),
        ("pause", "stop firing"),
        ("resume", "fire again"),
        ("trigger", "fire once now"),
        ("delete", "delete a schedule"),
    ]:
        actions.add_parser(name, parents=[common], help=text).add_argument("schedule_id")
