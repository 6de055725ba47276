"""Task types for the chaos suite only: a worker loads them with `--tasks tests.chaos.chaos_tasks`
(no production worker knows them, so such a task can never reach one).

- `chaos_poison`: SIGKILLs the process group of the worker that runs it, every time: a task that
  takes its machine down (an OOM kill, a segfaulting library).
- `chaos_nul`: returns text with a NUL character (which PostgreSQL's jsonb cannot store).
- `chaos_big`: returns a result of `parameters.bytes` bytes."""

from __future__ import annotations

import os
import signal
from typing import Any

from worker.task_executor import task


@task("chaos_poison")
async def chaos_poison(payload: dict[str, Any]) -> None:
    # The whole group: the worker and its process-pool children, as a machine going down would.
    os.killpg(os.getpgrp(), signal.SIGKILL)


@task("chaos_nul")
async def chaos_nul(payload: dict[str, Any]) -> dict[str, Any]:
    return {"text": "before\u0000after"}


@task("chaos_big")
async def chaos_big(payload: dict[str, Any]) -> dict[str, Any]:
    size = int((payload.get("parameters") or {}).get("bytes", 2 * 1024 * 1024))
    return {"blob": "x" * size}
