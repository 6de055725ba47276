"""Self-healing: the loops that make Redis agree with the database again after any failure.

- sweep: leases that expired (a dead or frozen worker) go back to the queue through the guarded
  transitions, so a late report from the old attempt is refused.
- promote: delayed tasks (retry backoff, scheduled starts) move to their queues when due.
- reconcile: pending tasks the database has and Redis lost are queued again.
- rebuild: when the epoch key is gone, Redis lost its data; queues and leases are rebuilt.
Only one scheduler process sweeps at a time (a Redis lock with expiry)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, OperationalError

from app.config import Settings
from app.database import repositories as repo
from app.database import transitions
from app.database.connection import Database
from app.models.task import AttemptOutcome, ReadyTask, TaskStatus
from app.services.message_queue import RedisQueue
from app.services.scheduler import Scheduler
from app.services.worker_manager import WorkerManager
from app.utils import monitoring

log = structlog.get_logger(__name__)

PAGE = 1000
# Re-runs allowed beyond max_retries when attempts end because the worker vanished: a crash of the
# machine is not the task's fault, but a task that kills every worker must still end.
WORKER_LOST_ALLOWANCE = 5
# Delayed tasks (scheduled starts, retry backoff) are moved to their queues this often, so a task
# scheduled for T starts within a fraction of a second after T.
PROMOTE_INTERVAL = 0.2


class Recovery:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        queue: RedisQueue,
        scheduler: Scheduler,
        workers: WorkerManager,
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.scheduler = scheduler
        self.workers = workers
        self.instance = uuid.uuid4().hex
        self._reconcile_cursor = ""
        self._last_reconcile = 0.0

    async def run_forever(self, stop: asyncio.Event) -> None:
        """The maintenance loop of one scheduler process; survives Redis and database outages.
        It ends when `stop` is set: cancelling it mid-statement is avoided because a driver that
        fails while rolling back can replace the CancelledError and hide the request to stop."""
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while not stop.is_set():
            try:
                await self.queue.promote_due()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.settings.sweep_interval
                    await self.tick()
            except (RedisError, OSError, OperationalError, DBAPIError) as exc:
                log.warning("maintenance.unavailable", error=str(exc))
            except Exception:
                log.exception("maintenance.failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), min(PROMOTE_INTERVAL, self.settings.sweep_interval)
                )

    async def tick(self) -> None:
        """One round of healing: rebuild Redis if it lost its data, sweep expired leases and
        silent workers (one process at a time), reconcile a page. Promoting delayed tasks is
        not part of it: run_forever does that on its own, shorter, cadence."""
        if not await self.queue.redis.exists(self.queue.keys.epoch):
            await self.rebuild_redis()
        if await self._hold_lock():
            await self.sweep_expired()
            await self.restore_missing_leases()
            await self.workers.mark_silent_offline()
            for task_type, depth in (await self.queue.queue_depths()).items():
                monitoring.QUEUE_DEPTH.labels(task_type).set(depth)
        loop_time = asyncio.get_running_loop().time()
        if (
            self.scheduler.redis_behind
            or loop_time - self._last_reconcile > 5 * self.settings.sweep_interval
        ):
            self._last_reconcile = loop_time
            self.scheduler.redis_behind = False
            await self.reconcile_page()

    async def _hold_lock(self) -> bool:
        """Take or keep the sweeper lock; it expires on its own if this process dies."""
        ttl_ms = int(max(3 * self.settings.sweep_interval, 2) * 1000)
        key = self.queue.keys.sweeper_lock
        if await self.queue.redis.set(key, self.instance, nx=True, px=ttl_ms):
            return True
        holder = await self.queue.redis.get(key)
        if holder in (self.instance, self.instance.encode()):
            await self.queue.redis.pexpire(key, ttl_ms)
            return True
        return False

    async def sweep_expired(self) -> int:
        expired = await self.queue.expired_leases(PAGE)
        if not expired:
            return 0
        now = datetime.now(UTC)
        ids = [task_id for task_id, _owner in expired]
        async with self.db.transaction() as conn:
            heads = await repo.task_heads(conn, ids)
        for task_id in ids:
            await self._recover_one(task_id, heads.get(task_id), now)
        monitoring.LEASES_EXPIRED.inc(len(ids))
        return len(ids)

    async def _recover_one(self, task_id: str, head: Row[Any] | None, now: datetime) -> None:
        if head is None:
            await self.queue.release([task_id])  # no such task: a leftover entry
            return
        status = TaskStatus(head.status)
        if status == TaskStatus.PENDING:
            # Claimed in Redis but never started: just put it back.
            await self.queue.requeue(ReadyTask(task_id, head.task_type, head.priority))
        elif status == TaskStatus.RUNNING:
            await self._requeue_lost(task_id, head.attempt, head.worker_id, now)
        else:
            await self.queue.release([task_id])  # finished; the release after its report was lost

    async def _requeue_lost(
        self, task_id: str, attempt: int, worker_id: str | None, now: datetime
    ) -> None:
        error = f"worker lost: lease of worker '{worker_id}' expired"
        async with self.db.transaction() as conn:
            ready = await transitions.retry(
                conn,
                task_id,
                attempt,
                outcome=AttemptOutcome.WORKER_LOST,
                error=error,
                run_at=now,
                now=now,
                extra_attempts=WORKER_LOST_ALLOWANCE,
            )
            if ready is None:
                await transitions.fail(
                    conn, task_id, attempt, outcome=AttemptOutcome.WORKER_LOST, error=error, now=now
                )
        log.warning(
            "lease.expired",
            task_id=task_id,
            attempt=attempt,
            worker_id=worker_id,
            requeued=ready is not None,
        )
        if ready is not None:
            await self.queue.requeue(ReadyTask(ready.task_id, ready.task_type, ready.priority))
        else:
            await self.queue.release([task_id])

    async def restore_missing_leases(self) -> int:
        """A running task must hold a Redis lease, or nothing would notice its worker dying (the
        lease write after its start may have failed while Redis was unreachable). Tasks past
        their database lease and missing from Redis get a fresh lease for their worker: a live
        worker keeps renewing it, a dead one lets it expire into the ordinary sweep."""
        async with self.db.read() as conn:
            rows = await repo.running_past_lease(conn, datetime.now(UTC), limit=PAGE)
        if not rows:
            return 0
        known = await self.queue.is_leased([r.task_id for r in rows])
        missing = [r for r, leased in zip(rows, known, strict=True) if not leased]
        for row in missing:
            await self.queue.hold(row.worker_id or "", [(row.task_id, row.task_type)])
        if missing:
            log.warning("lease.restored", task_ids=[r.task_id for r in missing])
        return len(missing)

    async def reconcile_page(self) -> int:
        """Queue again the pending tasks Redis does not know, one page per call, cycling through
        all pending tasks so a large backlog is covered over successive calls."""
        async with self.db.transaction() as conn:
            rows = await repo.pending_ready_after(conn, self._reconcile_cursor, limit=PAGE)
        self._reconcile_cursor = rows[-1].task_id if len(rows) == PAGE else ""
        settle = datetime.now(UTC) - timedelta(seconds=1)
        candidates = [r for r in rows if r.updated_at < settle]
        if not candidates:
            return 0
        ready = [ReadyTask(r.task_id, r.task_type, r.priority, r.scheduled_at) for r in candidates]
        known = await self.queue.is_known(ready)
        missing = [task for task, k in zip(ready, known, strict=True) if not k]
        if missing:
            log.warning("reconcile.requeued", count=len(missing))
            await self.queue.enqueue(missing)
        return len(missing)

    async def on_startup(self) -> None:
        """Make Redis agree with the database before serving: rebuild it if it lost its data,
        otherwise queue what it is missing and drop entries for tasks that are not pending."""
        if not await self.queue.redis.exists(self.queue.keys.epoch):
            await self.rebuild_redis()
            return
        await self.drop_orphans()
        self._reconcile_cursor = ""
        while True:
            await self.reconcile_page()
            if not self._reconcile_cursor:
                break

    async def drop_orphans(self) -> int:
        dropped = 0
        for task_type in await self.queue.queue_depths():
            ids = await self.queue.queued_ids(task_type)
            for start in range(0, len(ids), PAGE):
                chunk = ids[start : start + PAGE]
                async with self.db.transaction() as conn:
                    heads = await repo.task_heads(conn, chunk)
                stale = [
                    i for i in chunk if i not in heads or heads[i].status != TaskStatus.PENDING
                ]
                await self.queue.remove_queued(task_type, stale)
                dropped += len(stale)
        if dropped:
            log.warning("reconcile.dropped_orphans", count=dropped)
        return dropped

    async def rebuild_redis(self) -> None:
        """Rebuild queues, delayed set and leases from the database (start-up, or Redis data loss).
        Running tasks get a fresh lease so their workers can keep renewing and report normally."""
        log.warning("redis.rebuild.start")
        queued = await self._rebuild_pending()
        leased = await self._rebuild_leases()
        await self.queue.redis.set(self.queue.keys.epoch, datetime.now(UTC).isoformat())
        monitoring.REDIS_REBUILDS.inc()
        log.warning("redis.rebuild.done", queued=queued, leased=leased)

    async def _rebuild_pending(self) -> int:
        cursor, total = "", 0
        while True:
            async with self.db.transaction() as conn:
                rows = await repo.pending_ready_after(conn, cursor, limit=PAGE)
            if not rows:
                return total
            await self.queue.enqueue(
                [ReadyTask(r.task_id, r.task_type, r.priority, r.scheduled_at) for r in rows]
            )
            total += len(rows)
            cursor = rows[-1].task_id

    async def _rebuild_leases(self) -> int:
        cursor, total = "", 0
        while True:
            async with self.db.transaction() as conn:
                rows = await repo.running_after(conn, cursor, limit=PAGE)
            if not rows:
                return total
            await self.queue.restore_leases([(r.task_id, r.worker_id or "") for r in rows])
            total += len(rows)
            cursor = rows[-1].task_id
