"""Per-task logs on the scheduler's side: storing what workers ship, and retention.

A log line is worth less than the report it travels with: storing it is a transaction of its
own, and its failure is logged and swallowed, never passed on to the exchange."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog

from app.database import task_logs
from app.database.connection import Database
from app.models.logs import ShippedLine

log = structlog.get_logger(__name__)


async def store_quietly(db: Database, lines: Sequence[ShippedLine], worker_id: str) -> None:
    """Store the lines of `worker_id`'s attempts in one set-based insert, or log why not: the
    reports of the same exchange go on regardless."""
    try:
        async with db.transaction() as conn:
            kept = await task_logs.store(conn, lines, worker_id=worker_id)
    except Exception as exc:  # any failure: a log line must never cost a transition
        log.warning("task_logs.store_failed", lines=len(lines), error=type(exc).__name__)
        return
    if kept < len(lines):
        log.warning("task_logs.not_its_attempts", worker_id=worker_id, lines=len(lines) - kept)


class Retention:
    """The leader's purge of finished tasks older than RETENTION_DAYS, a bounded batch per step.
    While a step finds a full batch the next step goes on at once (the next tick); otherwise
    the purge rests for IDLE_SECONDS: a quiet store costs one indexed query a minute."""

    BATCH = 1000
    LOG_ROWS = 20_000  # log lines deleted per step at most
    IDLE_SECONDS = 60.0

    def __init__(
        self,
        db: Database,
        *,
        days: float,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.keep = timedelta(days=days)
        self.clock = clock
        self.monotonic = monotonic
        self.rest_until = 0.0

    async def step(self) -> int:
        """Purge one batch if one is due; returns how many tasks went."""
        if self.monotonic() < self.rest_until:
            return 0
        async with self.db.transaction() as conn:
            purged = await task_logs.purge_finished(
                conn, before=self.clock() - self.keep, limit=self.BATCH, log_rows=self.LOG_ROWS
            )
        if purged.complete and purged.tasks < self.BATCH:
            self.rest_until = self.monotonic() + self.IDLE_SECONDS
        if purged.tasks:
            log.info("retention.purged", tasks=purged.tasks, older_than_days=self.keep.days)
        return purged.tasks
