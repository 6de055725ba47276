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
import math
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, OperationalError

from app.config import Settings
from app.database import repositories as repo
from app.database import transitions
from app.database.connection import Database
from app.models.task import AttemptOutcome, ReadyTask, TaskStatus
from app.models.worker import WorkerStatus
from app.services.message_queue import LUA_DIR, RedisQueue, lease_token
from app.services.scheduler import Scheduler
from app.services.worker_manager import WorkerManager
from app.utils import monitoring

log = structlog.get_logger(__name__)

PAGE = 1000
# Delayed tasks (scheduled starts, retry backoff) are moved to their queues this often, so a task
# scheduled for T starts within a fraction of a second after T.
PROMOTE_INTERVAL = 0.2


@dataclass
class SweepPass:
    """One full pass of the reconciliation sweep: every ready task that last changed before it
    began, read page by page in the order of the change (later changes are the tail pass's)."""

    began: float  # Recovery.clock() when it began
    changed_before: datetime
    pages: int  # pages of the ready index it covers, counted when it began
    read: int = 0  # pages read so far


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
        self._sweep: SweepPass | None = None
        # The sweep's pace follows this clock; tests move it instead of waiting.
        self.clock: Callable[[], float] = time.monotonic
        self._last_reconcile = 0.0
        # Periodic work of other services (schedules, retention), run by the leader only, after
        # the healing steps of each tick, each step fenced by the lock like those.
        self.leader_steps: list[Callable[[], Awaitable[object]]] = []
        self._gauged_types: set[str] = set()

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
            self.enforce_deadlines,
            self.workers.mark_silent_offline,
            self.expire_unroutable,
            self._record_depths,
            *self.leader_steps,
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
        """Gauges of the whole system, set by the leader: queue depths, live workers, and the
        ready tasks no live worker can run (the alert "no worker for a queued type")."""
        workers = [w for w in await self.workers.list_all() if w.status != WorkerStatus.OFFLINE]
        live_types = {c for w in workers for c in w.capabilities}
        monitoring.WORKERS_ONLINE.set(len(workers))
        depths = await self.queue.queue_depths()
        # Redis deletes an emptied queue: its gauges must fall to 0, not keep the last depth.
        for task_type in self._gauged_types - depths.keys():
            depths[task_type] = 0
        self._gauged_types = set(depths)
        for task_type, depth in depths.items():
            label = monitoring.task_type_label(task_type)
            monitoring.QUEUE_DEPTH.labels(label).set(depth)
            monitoring.UNROUTABLE.labels(label).set(0 if task_type in live_types else depth)

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
            await self.end_lost_attempt(head, now, owner)
        else:
            # The lease is not the running attempt's (its hold after the start never reached
            # Redis): give it to that attempt, which renews it if its worker lives.
            token = lease_token(head.worker_id or "", head.attempt)
            await self.queue.hold([(task_id, head.task_type, token)])

    def _past_deadline(self, head: Row[Any], now: datetime) -> bool:
        """Whether the attempt overran its timeout by more than the worker's own enforcement
        takes (it stops renewing at timeout + LEASE_SECONDS): then it ended as a timeout, not a
        lost worker, and uses up an error retry."""
        if head.started_at is None:
            return False
        grace = timedelta(seconds=self.settings.lease_seconds)
        return bool(now > head.started_at + timedelta(seconds=head.timeout) + grace)

    async def end_lost_attempt(self, head: Row[Any], now: datetime, owner: str) -> None:
        """End a running attempt nobody will report (its lease expired, or it overran its
        deadline): retry the task while the policy allows, fail it otherwise. The worker, if it
        still runs it, is told to stop; its late report is refused like any stale one."""
        timed_out = self._past_deadline(head, now)
        outcome = AttemptOutcome.TIMEOUT if timed_out else AttemptOutcome.WORKER_LOST
        error = (
            f"timed out: running longer than its timeout of {head.timeout} s"
            if timed_out
            else f"worker lost: lease of worker '{head.worker_id}' expired"
        )
        task_id, attempt = head.task_id, head.attempt
        policy = self.scheduler.retry_policy
        async with self.db.transaction() as conn:
            ready = await transitions.retry(
                conn, task_id, attempt, outcome=outcome, error=error, policy=policy, now=now
            )
            if ready is None:
                await transitions.fail(
                    conn, task_id, attempt, outcome=outcome, error=error, now=now
                )
        log.warning(
            "attempt.timed_out" if timed_out else "lease.expired",
            task_id=task_id,
            attempt=attempt,
            worker_id=head.worker_id,
            requeued=ready is not None,
        )
        if timed_out:
            message = {"task_id": task_id, "attempt": attempt, "worker_id": head.worker_id}
            await self.queue.publish_cancel(message)
        if ready is not None:
            await self.queue.requeue(ready, owner)
        else:
            await self.queue.release([(task_id, owner)])

    async def enforce_deadlines(self) -> int:
        """End the attempts running past their timeout + grace whose leases are still renewed
        (a worker that does not enforce timeouts): the server-side deadline. Normally the worker
        reports the timeout, or stops renewing and the lease sweep ends it first."""
        now = datetime.now(UTC)
        grace = 2 * self.settings.lease_seconds + self.settings.sweep_interval
        async with self.db.read() as conn:
            overdue = await repo.running_past_deadline(conn, now, grace=grace, limit=PAGE)
        for head in overdue:
            token = lease_token(head.worker_id or "", head.attempt)
            await self.end_lost_attempt(head, now, token)
        return len(overdue)

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
    # Seconds a full pass of the sweep takes (plus one call), whatever the backlog: each call
    # reads the share of the pass's pages that time has come for, provided the leader reads
    # pages that fast. One page per call took 1,000 calls (83 minutes) at a million pending.
    RECONCILE_FULL_PASS = 60.0
    # A call reads the sweep's pages for at most this many sweep intervals: the lease sweep of
    # the next tick waits for it, and must not wait much longer than a sweep. Reading everything
    # due instead held it for 14 s at a million pending on a busy machine; with the budget the
    # pass runs late there instead (reconcile.pass_overdue), and a dead worker's tasks do not.
    RECONCILE_CALL_SWEEPS = 1.0

    async def reconcile_page(self) -> int:
        """Queue again the pending tasks Redis does not know. Two passes over the ready-task index:
        - tail: every ready task that changed since the previous call (up to TAIL_PAGES pages),
          so a task whose enqueue was lost (the API died after its commit, Redis failed) is found
          by the next call, not after a sweep of the whole backlog;
        - sweep, by the leader only: the pages of all ready tasks, in the order they last
          changed, that are due for the current full pass to end RECONCILE_FULL_PASS after it
          began (within a budget of time per call), continuing where the previous call stopped:
          an entry Redis lost long after the task changed (eviction, a failover to a replica
          that was behind).
        Returns how many tasks were queued again."""
        settle = datetime.now(UTC) - self.RECONCILE_SETTLE
        requeued = await self._reconcile_tail_pass(settle)
        if self.leading:
            requeued += await self._reconcile_sweep(settle)
        return requeued

    async def _reconcile_sweep(self, settle: datetime, *, whole: bool = False) -> int:
        """Read the sweep's pages that are due, within the call's time budget (`whole`: to the
        end of the pass). The lock is checked before each page, so a long call stops as soon as
        another process leads."""
        sweep = self._sweep
        if sweep is None or not self._reconcile_cursor:
            sweep = self._sweep = await self._begin_pass(settle)
        budget = self.RECONCILE_CALL_SWEEPS * self.settings.sweep_interval
        stop_at = math.inf if whole else self.clock() + budget
        requeued = 0
        for _ in range(sys.maxsize if whole else self._pages_due(sweep)):
            if self.clock() >= stop_at or not await self._hold_lock():
                break
            requeued += await self._sweep_page(sweep)
            if not self._reconcile_cursor:
                self._end_pass(sweep)
                break
        return requeued

    async def _begin_pass(self, settle: datetime) -> SweepPass:
        """Size a new pass by counting what it covers: the ready tasks that changed before
        `settle`. Later changes are the tail pass's, so the pass does not grow on its way."""
        async with self.db.read() as conn:
            backlog = await repo.count_ready(conn, changed_before=settle)
        self._reconcile_cursor = ""
        pages = max(1, math.ceil(backlog / PAGE))
        return SweepPass(began=self.clock(), changed_before=settle, pages=pages)

    def _pages_due(self, sweep: SweepPass) -> int:
        """Pages to read now for the pass to end RECONCILE_FULL_PASS after it began: the share of
        its pages whose time has come, plus one (the first page at once, and the last read that
        finds the end), and at least one page per call."""
        share = min(1.0, (self.clock() - sweep.began) / self.RECONCILE_FULL_PASS)
        return max(1, math.floor(sweep.pages * share) + 1 - sweep.read)

    async def _sweep_page(self, sweep: SweepPass) -> int:
        """Check the next page of the pass; the position only moves past rows that were checked,
        so a Redis or database error loses nothing. The empty position means the pass is over."""
        after = repo.ReadyKey.parse(self._reconcile_cursor)
        async with self.db.read() as conn:
            rows = await repo.pending_ready_after(
                conn, after, changed_before=sweep.changed_before, limit=PAGE
            )
        requeued = await self._requeue_missing(rows)
        sweep.read += 1
        last = repo.ReadyKey(rows[-1].updated_at, rows[-1].task_id) if rows else None
        self._reconcile_cursor = last.token() if last is not None and len(rows) == PAGE else ""
        return requeued

    def _end_pass(self, sweep: SweepPass) -> None:
        seconds = round(self.clock() - sweep.began, 1)
        # Twice the bound: the leader reads pages slower than the pace needs (an overloaded
        # machine), and the bound of docs/architecture.md does not hold.
        if seconds > 2 * self.RECONCILE_FULL_PASS:
            log.warning("reconcile.pass_overdue", seconds=seconds, pages=sweep.read)
        else:
            log.debug("reconcile.pass_done", seconds=seconds, pages=sweep.read)

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

    # Tasks looked up in Redis per known.lua call. The script holds the event loop 1 to 2 µs a
    # task (a pipeline of ZSCOREs held it 0.1 ms a task), and Redis about 3 µs a task, which
    # other clients (workers' claims) wait out: 500 keep that wait near a millisecond.
    RECONCILE_CHECK = 500

    async def _requeue_missing(self, rows: list[Row[Any]]) -> int:
        """Queue the tasks of `rows` that Redis holds nowhere (queue, lease or delayed set)."""
        ready = [ReadyTask(r.task_id, r.task_type, r.priority, r.scheduled_at) for r in rows]
        missing: list[ReadyTask] = []
        for start in range(0, len(ready), self.RECONCILE_CHECK):
            chunk = ready[start : start + self.RECONCILE_CHECK]
            missing += await self.queue.missing(chunk)
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
        otherwise queue what it is missing (one whole pass of the sweep, unpaced) and drop
        entries for tasks that are not pending. Only the leader does it: with several API
        processes starting, one is enough. Every process checks Redis's eviction policy."""
        await self.check_eviction_policy()
        if not await self._hold_lock():
            return
        if not await self.queue.redis.exists(self.queue.keys.epoch):
            await self.rebuild_redis()
            return
        await self.drop_orphans()
        settle = datetime.now(UTC) - self.RECONCILE_SETTLE
        await self._reconcile_tail_pass(settle)
        self._reconcile_cursor = ""
        await self._reconcile_sweep(settle, whole=True)

    async def check_eviction_policy(self) -> str | None:
        """Warn unless Redis runs with `maxmemory-policy noeviction`. Under another policy a full
        Redis drops keys without a word: an evicted queue entry waits for the reconciliation
        sweep, an evicted epoch key forces a rebuild, an evicted lock hands over the lead
        mid-step. Under noeviction it refuses writes instead, which the API sees and
        reconciliation repairs. Managed services may forbid CONFIG: then it is only noted."""
        try:
            answer = await self.queue.redis.config_get("maxmemory-policy")
        except ResponseError as exc:
            log.info("redis.eviction_policy_unknown", error=str(exc))
            return None
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in answer.values()]
        policy = values[0] if values else ""
        if policy != "noeviction":
            log.warning("redis.eviction_policy", policy=policy, expected="noeviction")
        return policy

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
        log.info("redis.rebuild.start")
        queued = await self._rebuild_pending()
        leased = await self._rebuild_leases()
        await self.queue.redis.set(self.queue.keys.epoch, datetime.now(UTC).isoformat())
        # A first start (or a loss while nothing was pending) restores nothing: not worth an
        # alert. Restoring work means Redis had lost it.
        if queued or leased:
            monitoring.REDIS_REBUILDS.inc()
            log.warning("redis.rebuild.done", queued=queued, leased=leased)
        else:
            log.info("redis.rebuild.done", queued=queued, leased=leased)

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
