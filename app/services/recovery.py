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
from app.services.message_queue import LUA_DIR, RedisQueue, lease_token
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
        self.leading = False
        self._lock = queue.redis.register_script((LUA_DIR / "lock.lua").read_text())
        self._reconcile_cursor = ""
        self._last_reconcile = 0.0

    async def run_forever(self, stop: asyncio.Event) -> None:
        """The maintenance loop of one scheduler process; survives Redis and database outages.
        Only the leader (the holder of the sweeper lock) does the periodic work; the others
        check once per sweep whether they lead now, and stay cheap meanwhile.
        It ends when `stop` is set: cancelling it mid-statement is avoided because a driver that
        fails while rolling back can replace the CancelledError and hide the request to stop."""
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while not stop.is_set():
            try:
                if self.leading:
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
        """One round of healing, by the leader: rebuild Redis if it lost its data, sweep expired
        leases and silent workers, reconcile. The lock is renewed between the steps, so a leader
        that lost it (paused past its expiry) stops before the next step. Promoting delayed
        tasks is not part of it: run_forever does that on its own, shorter, cadence. A follower
        only reconciles when its own enqueue failed (its tasks, its knowledge)."""
        steps = [
            self._rebuild_if_lost,
            self.sweep_expired,
            self.restore_missing_leases,
            self.workers.mark_silent_offline,
            self.expire_unroutable,
            self._record_depths,
        ]
        for step in steps:
            if not await self._hold_lock():
                break
            await step()
        loop_time = asyncio.get_running_loop().time()
        due = self.leading and loop_time - self._last_reconcile > 5 * self.settings.sweep_interval
        if self.scheduler.redis_behind or due:
            self._last_reconcile = loop_time
            self.scheduler.redis_behind = False
            await self.reconcile_page()

    async def expire_unroutable(self) -> int:
        """Fail pending tasks that waited longer than EXPIRE_UNROUTABLE_AFTER for a type no live
        worker can run, and their dependents (off unless set): a typo in a task type must not
        wait for ever."""
        after = self.settings.expire_unroutable_after
        if after is None:
            return 0
        now = datetime.now(UTC)
        live = sorted(await self.workers.live_capabilities())
        waited_since = now - timedelta(seconds=after)
        async with self.db.transaction() as conn:
            failed = await transitions.expire_unroutable(
                conn, live_types=live, waited_since=waited_since, now=now
            )
        if failed:
            log.warning("tasks.expired_unroutable", count=len(failed), task_ids=failed[:10])
            await self.queue.forget(failed)
        return len(failed)

    async def _rebuild_if_lost(self) -> None:
        if not await self.queue.redis.exists(self.queue.keys.epoch):
            await self.rebuild_redis()

    async def _record_depths(self) -> None:
        for task_type, depth in (await self.queue.queue_depths()).items():
            monitoring.QUEUE_DEPTH.labels(monitoring.task_type_label(task_type)).set(depth)

    async def _hold_lock(self) -> bool:
        """Take or keep the sweeper lock (lock.lua, one atomic step); it expires on its own if
        this process dies or stalls."""
        ttl_ms = int(max(3 * self.settings.sweep_interval, 2) * 1000)
        keys = [self.queue.keys.sweeper_lock]
        self.leading = bool(await self._lock(keys=keys, args=[self.instance, ttl_ms]))
        return self.leading

    async def sweep_expired(self) -> int:
        expired = await self.queue.expired_leases(PAGE)
        if not expired:
            return 0
        now = datetime.now(UTC)
        async with self.db.transaction() as conn:
            heads = await repo.task_heads(conn, [task_id for task_id, _owner in expired])
        for task_id, owner in expired:
            await self._recover_one(task_id, owner, heads.get(task_id), now)
        monitoring.LEASES_EXPIRED.inc(len(expired))
        return len(expired)

    async def _recover_one(
        self, task_id: str, owner: str, head: Row[Any] | None, now: datetime
    ) -> None:
        """Act on one expired lease, by what the database says of its task. Every Redis move
        names the lease's owner, so a start that committed after the read keeps its new lease."""
        if head is None:
            await self.queue.release([(task_id, "")])  # no such task: a leftover entry
            return
        status = TaskStatus(head.status)
        if status == TaskStatus.PENDING:
            # Claimed in Redis but never started: just put it back.
            await self.queue.requeue(ReadyTask(task_id, head.task_type, head.priority), owner)
        elif status != TaskStatus.RUNNING:
            await self.queue.release([(task_id, owner)])  # its release after the report was lost
        elif owner == lease_token(head.worker_id or "", head.attempt):
            await self._requeue_lost(task_id, head.attempt, head.worker_id, now, owner)
        else:
            # The lease is not the running attempt's (its hold after the start never reached
            # Redis): give it to that attempt, which renews it if its worker lives.
            token = lease_token(head.worker_id or "", head.attempt)
            await self.queue.hold([(task_id, head.task_type, token)])

    async def _requeue_lost(
        self, task_id: str, attempt: int, worker_id: str | None, now: datetime, owner: str
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
            await self.queue.requeue(ReadyTask(task_id, ready.task_type, ready.priority), owner)
        else:
            await self.queue.release([(task_id, owner)])

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
        await self.queue.hold(
            [(r.task_id, r.task_type, lease_token(r.worker_id or "", r.attempt)) for r in missing]
        )
        if missing:
            log.warning("lease.restored", task_ids=[r.task_id for r in missing])
        return len(missing)

    # Reconciliation (docs/architecture.md, "Reconciliation"). A change younger than
    # RECONCILE_SETTLE may be a commit whose enqueue is still on its way, or (appendfsync
    # everysec) not yet on Redis's disk, so it waits for the next call.
    RECONCILE_SETTLE = timedelta(seconds=2)
    # The tail pass reads at most this many pages per call; what is left waits for the next call.
    TAIL_PAGES = 10
    # Where the tail pass of a new process starts; the full pass at start-up covers the rest.
    TAIL_START = timedelta(minutes=1)
    # The last change of a ready task that the tail pass checked; None before the first call.
    _reconcile_tail: repo.ReadyKey | None = None

    async def reconcile_page(self) -> int:
        """Queue again the pending tasks Redis does not know, reading a bounded number of entries
        of the ready-task index per call, however many tasks are pending. Two passes:
        - tail: every ready task that changed since the previous call (up to TAIL_PAGES pages),
          so a task whose enqueue was lost (the API died after its commit, Redis failed) is found
          by the next call, not after a sweep of the whole backlog;
        - sweep: one page of all ready tasks in the order they last changed, continuing where the
          previous call stopped: an entry Redis lost long after the task changed.
        Returns how many tasks were queued again."""
        settle = datetime.now(UTC) - self.RECONCILE_SETTLE
        requeued = await self._reconcile_tail_pass(settle)
        after = repo.ReadyKey.parse(self._reconcile_cursor)
        async with self.db.read() as conn:
            rows = await repo.pending_ready_after(conn, after, changed_before=settle, limit=PAGE)
        requeued += await self._requeue_missing(rows)
        last = repo.ReadyKey(rows[-1].updated_at, rows[-1].task_id) if rows else None
        self._reconcile_cursor = last.token() if last is not None and len(rows) == PAGE else ""
        return requeued

    async def _reconcile_tail_pass(self, settle: datetime) -> int:
        """Check the ready tasks that changed after the tail position and before `settle`. The
        position only moves past rows that were checked, so a Redis error loses nothing."""
        after = self._reconcile_tail or repo.ReadyKey(settle - self.TAIL_START, "")
        requeued = 0
        for _ in range(self.TAIL_PAGES):
            async with self.db.read() as conn:
                rows = await repo.pending_ready_after(
                    conn, after, changed_before=settle, limit=PAGE
                )
            requeued += await self._requeue_missing(rows)
            if rows:
                after = repo.ReadyKey(rows[-1].updated_at, rows[-1].task_id)
            self._reconcile_tail = after
            if len(rows) < PAGE:
                break
        return requeued

    # Tasks looked up in Redis per round trip. Encoding and parsing a pipeline holds the event
    # loop, about 0.1 ms a task: 1,000 at once held it for 100 ms, which every API request
    # arriving meanwhile waited out. 25 hold it for under 3 ms.
    RECONCILE_CHECK = 25

    async def _requeue_missing(self, rows: list[Row[Any]]) -> int:
        """Queue the tasks of `rows` that Redis holds nowhere (queue, lease or delayed set)."""
        ready = [ReadyTask(r.task_id, r.task_type, r.priority, r.scheduled_at) for r in rows]
        missing: list[ReadyTask] = []
        for start in range(0, len(ready), self.RECONCILE_CHECK):
            chunk = ready[start : start + self.RECONCILE_CHECK]
            known = await self.queue.is_known(chunk)
            missing += [task for task, k in zip(chunk, known, strict=True) if not k]
        if missing:
            missing = await self._still_ready(missing)
        if missing:
            log.warning("reconcile.requeued", count=len(missing))
            await self.queue.enqueue(missing)
        return len(missing)

    async def _still_ready(self, tasks: list[ReadyTask]) -> list[ReadyTask]:
        """The database read is older than the Redis look-ups: a task a worker claimed, ran and
        finished in between is in neither and must not be queued again (it would only be
        refused at its start, but each is a wasted claim and a false warning)."""
        async with self.db.read() as conn:
            heads = await repo.task_heads(conn, [t.task_id for t in tasks])
        return [
            t
            for t in tasks
            if (head := heads.get(t.task_id)) is not None
            and head.status == TaskStatus.PENDING
            and head.remaining_dependencies == 0
        ]

    async def on_startup(self) -> None:
        """Make Redis agree with the database before serving: rebuild it if it lost its data,
        otherwise queue what it is missing and drop entries for tasks that are not pending.
        Only the leader does it: with several API processes starting, one is enough."""
        if not await self._hold_lock():
            return
        if not await self.queue.redis.exists(self.queue.keys.epoch):
            await self.rebuild_redis()
            return
        await self.drop_orphans()
        self._reconcile_cursor = ""
        while await self._hold_lock():  # a long backlog must not outlive the lock unnoticed
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
        """Queue every ready task, a keyset page at a time. Tasks that change after the rebuild
        began are queued by whoever changes them, so the pass stops there rather than chase them."""
        began = datetime.now(UTC)
        after: repo.ReadyKey | None = None
        total = 0
        while True:
            async with self.db.read() as conn:
                rows = await repo.pending_ready_after(conn, after, changed_before=began, limit=PAGE)
            if not rows:
                return total
            await self.queue.enqueue(
                [ReadyTask(r.task_id, r.task_type, r.priority, r.scheduled_at) for r in rows]
            )
            total += len(rows)
            after = repo.ReadyKey(rows[-1].updated_at, rows[-1].task_id)

    async def _rebuild_leases(self) -> int:
        cursor, total = "", 0
        while True:
            async with self.db.transaction() as conn:
                rows = await repo.running_after(conn, cursor, limit=PAGE)
            if not rows:
                return total
            await self.queue.restore_leases(
                [(r.task_id, lease_token(r.worker_id or "", r.attempt)) for r in rows]
            )
            total += len(rows)
            cursor = rows[-1].task_id
