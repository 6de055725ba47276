"""`dts` / `python -m dts_client`: the scheduler from a shell. Exit codes: 0 done, 1 a task failed
or was cancelled, 2 usage or invalid input, 3 the API unreachable, 4 refused (not found,
conflict, unauthorized, forbidden, rate limited), 5 a wait timed out."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from dts_client.cli import admin, tasks
from dts_client.cli.parser import build_parser
from dts_client.cli.render import Output
from dts_client.client import Client
from dts_client.errors import (
    DtsError,
    Invalid,
    TaskFailed,
    Unavailable,
    WaitTimeout,
    error_payload,
)
from dts_client.retry import RetryPolicy

USAGE, UNREACHABLE, REFUSED, TIMED_OUT = 2, 3, 4, 5
# Someone at a shell wants a quick answer when the API is down: about a second of retrying, not
# the library's default of up to 30 s.
CLI_RETRY = RetryPolicy(attempts=4, budget=10.0)

Handler = Callable[[Client, Output, argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {
    "submit": tasks.submit,
    "submit-batch": tasks.submit_batch,
    "get": tasks.get,
    "list": tasks.list_tasks,
    "wait": tasks.wait,
    "cancel": tasks.cancel,
    "retry": tasks.retry,
    "graph": tasks.graph,
    "logs": tasks.logs,
    "workers": admin.workers,
    "queues": admin.queues,
    "watch": admin.watch,
    "keys": admin.keys,
    "schedules": admin.schedules,
}


def exit_code(error: Exception) -> int:
    if isinstance(error, TaskFailed):
        return tasks.FAILED
    if isinstance(error, Invalid | tasks.UsageError):
        return USAGE
    if isinstance(error, Unavailable):
        return UNREACHABLE
    if isinstance(error, WaitTimeout):
        return TIMED_OUT
    return REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(as_json=getattr(args, "json", False))
    try:
        url, key = getattr(args, "api_url", None), getattr(args, "api_key", None)
        with Client(url, key, retry=CLI_RETRY) as client:
            return COMMANDS[args.command](client, out, args)
    except (DtsError, tasks.UsageError) as exc:
        if isinstance(exc, DtsError):
            payload = error_payload(exc)
        else:
            payload = {"error": "UsageError", "message": str(exc)}
        out.error(str(exc), payload)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


__all__ = ["COMMANDS", "main"]
