"""Task scheduling: admission of new tasks and the handling of what workers report.

Order of effects, everywhere: commit to the database first, then tell Redis. A crash between the
two leaves the database ahead of Redis, which reconciliation repairs; never the other way round."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from app.config import Settings
from app.database import repositories as repo
from app.database import transitions
from app.database.admission import AdmissionError, Admitted, NewTask, admit
from app.database.connection import Database
from app.models.logs import ShippedLine
from app.models.task import (
    AttemptOutcome,
    ReadyTask,
    TaskCreate,
    TaskPublic,
    TaskReport,
    TaskStatus,
    TaskToRun,
)
from app.models.worker import ExchangeResponse, ReportResponse, StartResponse
from app.services import retry_policy, task_logs
from app.services.group_submit import SubmitGroup
from app.services.message_queue import RedisQueue, claim_token, lease_token
from app.utils import monitoring

log = structlog.get_logger(__name__)
# Admissions of single submissions in flight at once on PostgreSQL (see SubmitGroup).
SUBMIT_FLUSHERS = 4


class PayloadTooLarge(AdmissionError):
    status_code = 413
    kind = "payload_too_large"

    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(index, ["payload"], f"payload is {size} bytes; the limit is {limit}")


class AlreadyFinal(Exception):
    def __init__(self, task_id: str, status: TaskStatus) -> None:
        super().__init__(f"task '{task_id}' is already {status}")


# Completions are applied by one set-based statement however many there are; every other ending
# (retry, failure, release) by a few statements of its own, 5-20 ms each on SQLite under its one
# write lock. One request's 500 failures in one transaction held that lock for seconds (health
# checks and submissions waited, some got 503), so they are applied this many at a time.
SLOW_REPORTS_PER_TRANSACTION = 10


def utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        queue: RedisQueue,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """`clock`: the scheduler's time. The API's own by default; a worker that runs its own
        transitions (worker/transport.py) passes the database server's, so that no protocol
        time depends on that worker's clock being right."""
        self.settings = settings
        self.clock = clock
        self.db = db
        self.queue = queue
        # Set when Redis could not be told about committed work; reconciliation catches up.
        self.redis_behind = False
        self.retry_policy = retry_policy.RetryPolicy(
            base=settings.retry_backoff_base,
            cap=settings.retry_backoff_max,
            max_losses=settings.max_worker_losses,
        )
        self.single_submissions = SubmitGroup(
            self.admit_resolved, flushers=1 if db.is_sqlite else SUBMIT_FLUSHERS
        )

    # --- admission ---------------------------------------------------------------------------

    def resolve(
        self, index: int, spec: TaskCreate, correlation_id: str | None, now: datetime
    ) -> NewTask:
        size = len(orjson.dumps(spec.payload))
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLarge(index, size, self.settings.max_payload_bytes)
        scheduled_at = spec.scheduled_at
        if scheduled_at is not None and scheduled_at.tzinfo is None:
            scheduled_at = scheduled_at.replace(tzinfo=UTC)
        if spec.delay_seconds:
            scheduled_at = now + timedelta(seconds=spec.delay_seconds)
        return NewTask(
            task_id=spec.task_id or str(uuid.uuid4()),
            id_generated=spec.task_id is None,
            received_at=now,
            task_type=spec.task_type,
            payload=spec.payload,
            priority=spec.priority,
            timeout=spec.timeout or self.settings.task_timeout,
            max_retries=self.settings.max_retries if spec.max_retries is None else spec.max_retries,
            fingerprint=spec.fingerprint(),
            correlation_id=correlation_id,
            scheduled_at=scheduled_at,
            dependencies=list(dict.fromkeys(spec.dependencies)),
        )

    async def submit(
        self, spec: TaskCreate, correlation_id: str | None = None
    ) -> tuple[TaskPublic, bool]:
        """Admit one task: durable in the database before this returns, then queued in Redis.
        Concurrent single submissions share one transaction (app.services.group_submit)."""
        new = self.resolve(0, spec, correlation_id, self.clock())
        return await self.single_submissions.submit(new)

    async def submit_many(
        self, specs: Sequence[TaskCreate], correlation_id: str | None = None
    ) -> list[tuple[TaskPublic, bool]]:
        """Admit a batch in one transaction (all or nothing) and queue it in one Redis call."""
        now = self.clock()
        return await self.admit_resolved(
            [self.resolve(i, spec, correlation_id, now) for i, spec in enumerate(specs)]
        )

    async def admit_resolved(self, batch: Sequence[NewTask]) -> list[tuple[TaskPublic, bool]]:
        now = self.clock()
        admitted = await self._admit(batch, now)
        await self.announce(batch, admitted)
        log.info(
            "tasks.submitted",
            count=sum(a.created for a in admitted),
            ready=sum(a.ready is not None for a in admitted),
            task_ids=[n.task_id for n in batch[:10]],
        )
        # New tasks are answered from what was inserted; only resubmissions are read back.
        found: dict[str, TaskPublic] = {}
        existing = [a.task_id for a in admitted if a.row is None]
        if existing:
            async with self.db.read() as conn:
                found = await repo.get_tasks(conn, existing)
        for new, outcome in zip(batch, admitted, strict=True):
            if outcome.row is not None:
                found[new.task_id] = repo.to_public(outcome.row, new.dependencies)
        return [(found[a.task_id], a.created) for a in admitted]

    async def _admit(self, batch: Sequence[NewTask], now: datetime) -> list[Admitted]:
        # Without dependencies admission writes one statement: the rows' insert (asyncpg's
        # executemany is atomic). A concurrent submission of the same id between its look and
        # its insert still ends in an IntegrityError.
        alone = not any(new.dependencies for new in batch)
        try:
            async with self.db.writing(one_statement=alone) as conn:
                return await admit(conn, batch, now=now)
        except IntegrityError:
            # A concurrent submission of the same id won the insert; compare against it instead.
            async with self.db.transaction() as conn:
                return await admit(conn, batch, now=now)

    # --- operator actions ------------------------------------------------------------------------

    async def cancel(self, task_id: str, *, key_id: str | None = None) -> TaskPublic:
        """Cancel a pending or running task (and its dependents). A running attempt is told to
        stop through pub/sub; its late report is refused like any superseded attempt's. The
        action is audited (`key_id`: who asked) in the transaction that makes it."""
        now = self.clock()
        async with self.db.transaction() as conn:
            outcome = await transitions.cancel(conn, task_id, now=now)
            if not isinstance(outcome, TaskStatus):
                detail = {"previous": str(outcome.previous), "dependents": len(outcome.dependents)}
                await repo.record_event(
                    conn, "cancel", task_id=task_id, key_id=key_id, at=now, detail=detail
                )
        if isinstance(outcome, TaskStatus):
            raise AlreadyFinal(task_id, outcome)
        log.info(
            "task.cancelled",
            task_id=task_id,
            was=outcome.previous,
            dependents=len(outcome.dependents),
            key_id=key_id,
        )
        if outcome.previous == TaskStatus.RUNNING:
            message = {
                "task_id": task_id,
                "attempt": outcome.attempt,
                "worker_id": outcome.worker_id,
            }
            await self._tell_redis(self.queue.publish_cancel(message))
        await self._tell_redis(self.queue.forget([task_id, *outcome.dependents]))
        return await self.read(task_id)

    async def retry(self, task_id: str, *, key_id: str | None = None) -> TaskPublic:
        """Re-run a failed or cancelled task by hand, with a fresh allowance of retries."""
        now = self.clock()
        async with self.db.transaction() as conn:
            ready = await transitions.manual_retry(conn, task_id, now=now)
            await repo.record_event(conn, "retry", task_id=task_id, key_id=key_id, at=now)
        log.info("task.manual_retry", task_id=task_id, key_id=key_id)
        if ready is not None:
            await self._tell_redis(self.queue.enqueue([ready]))
        return await self.read(task_id)

    async def announce(self, batch: Sequence[NewTask], admitted: Sequence[Admitted]) -> None:
        """After an admission committed (here, or in a caller's own transaction: schedules):
        queue what is ready, Redis permitting (reconciliation catches up otherwise), and count
        the tasks that were new."""
        ready = [a.ready for a in admitted if a.ready is not None]
        if ready:
            await self._tell_redis(self.queue.enqueue(ready))
        for new, outcome in zip(batch, admitted, strict=True):
            if outcome.created:
                monitoring.TASKS_SUBMITTED.labels(monitoring.task_type_label(new.task_type)).inc()

    async def read(self, task_id: str) -> TaskPublic:
        async with self.db.read() as conn:
            task = await repo.get_task(conn, task_id)
        if task is None:
            raise transitions.UnknownTask(task_id)
        return task

    async def _tell_redis(self, operation: Any) -> None:
        try:
            await operation
        except (RedisError, OSError) as exc:
            self.redis_behind = True
            log.warning("redis.deferred", error=str(exc))

    # --- what workers report ---------------------------------------------------------------------

    async def exchange(
        self,
        worker_id: str,
        reports: Sequence[TaskReport],
        claims: Sequence[str],
        logs: Sequence[ShippedLine] = (),
    ) -> ExchangeResponse:
        """One round of the worker protocol: record how attempts ended (a report of a superseded
        attempt is refused: exactly one result per task, whatever arrives late or twice), and
        turn the worker's fresh Redis claims into numbered attempts. One transaction, unless the
        reports hold many endings other than completions: those take a few statements each, so
        they are applied SLOW_REPORTS_PER_TRANSACTION at a time (the completions with the first
        chunk, the claims with the last), and no request holds SQLite's write lock for long.
        Each report stays one guarded statement, so a request cut short is simply sent again.
        `logs`: handlers' output (of this worker's attempts only), stored first, in a
        transaction of its own whose failure is only logged (app.services.task_logs), so the
        reports' fate never depends on it."""
        if logs:
            await task_logs.store_quietly(self.db, logs, worker_id)
            if not reports and not claims:
                return ExchangeResponse()
        done = [r for r in reports if r.outcome == AttemptOutcome.COMPLETED]
        slow = [r for r in reports if r.outcome != AttemptOutcome.COMPLETED]
        step = SLOW_REPORTS_PER_TRANSACTION
        if len(slow) <= step:
            return await self._exchange_once(worker_id, reports, claims)
        chunks = [done + slow[:step]] + [slow[i : i + step] for i in range(step, len(slow), step)]
        merged = ExchangeResponse()
        for number, chunk in enumerate(chunks, start=1):
            last = number == len(chunks)
            answer = await self._exchange_once(worker_id, chunk, claims if last else [])
            merged.accepted += answer.accepted
            merged.refused_reports += answer.refused_reports
            merged.started, merged.refused_claims = answer.started, answer.refused_claims
        return merged

    async def _exchange_once(
        self, worker_id: str, reports: Sequence[TaskReport], claims: Sequence[str]
    ) -> ExchangeResponse:
        """Scheduler.exchange in one transaction (on PostgreSQL, when every report is a
        completion, one statement: transitions.complete_and_start)."""
        now = self.clock()
        # The database lease is the backstop behind the Redis one; heartbeats extend it.
        lease_until = now + timedelta(seconds=self.settings.worker_offline_after)
        # Completions and starts alone are one statement on PostgreSQL: no transaction around it
        # (the reads that follow see what it committed).
        completions_only = all(r.outcome == AttemptOutcome.COMPLETED for r in reports)
        async with self.db.writing(one_statement=completions_only) as conn:
            if completions_only:
                done = [transitions.Completion(r.task_id, r.attempt, r.result) for r in reports]
                accepted, to_queue, rows = await transitions.complete_and_start(
                    conn, done, claims, worker_id=worker_id, now=now, lease_until=lease_until
                )
                monitoring.ATTEMPTS_ENDED.labels(AttemptOutcome.COMPLETED).inc(len(accepted))
            else:
                accepted, to_queue = await self._record(conn, worker_id, reports, now)
                rows = await transitions.start(
                    conn, claims, worker_id=worker_id, now=now, lease_until=lease_until
                )
            wanted = [r.task_id for r in rows if r.has_dependencies]
            results = await repo.dependency_results(conn, wanted) if wanted else {}
            refused = _missing(claims, [r.task_id for r in rows])
            later, orphans = await self._refused(conn, refused, now) if refused else ([], [])
        started = [_to_run(r, results.get(r.task_id)) for r in rows]
        answer = ExchangeResponse(
            started=started,
            refused_claims=_missing(claims, [t.task_id for t in started]),
            accepted=accepted,
            refused_reports=_missing([r.task_id for r in reports], accepted),
        )
        self._observe(worker_id, rows, answer, now, reports)
        settled = self._settle(worker_id, reports, answer, to_queue + later, orphans)
        await self._tell_redis(settled)
        return answer

    async def _refused(
        self, conn: Any, task_ids: Sequence[str], now: datetime
    ) -> tuple[list[ReadyTask], list[tuple[str, str, str]]]:
        """Besides dropping their claims: a refused task that is not due yet goes back to the
        delayed set (a stray queue entry must not make it skip its backoff), and a running one
        gets a lease for its attempt. The latter closes a double fault: a start that committed
        while its lease was not taken (Redis failed) and whose answer was lost; its worker
        handed the claim back to the queue, and without a lease nothing would notice that no
        one runs the attempt until the database lease ran out. Now it lapses after one lease."""
        heads = (await repo.task_heads(conn, task_ids)).values()
        later = [
            ReadyTask(h.task_id, h.task_type, h.priority, h.scheduled_at)
            for h in heads
            if h.status == TaskStatus.PENDING
            and h.remaining_dependencies == 0
            and h.scheduled_at is not None
            and h.scheduled_at > now
        ]
        running = [
            (h.task_id, h.task_type, lease_token(h.worker_id or "", h.attempt))
            for h in heads
            if h.status == TaskStatus.RUNNING
        ]
        return later, running

    async def start_claimed(self, worker_id: str, task_ids: Sequence[str]) -> StartResponse:
        answer = await self.exchange(worker_id, [], task_ids)
        return StartResponse(started=answer.started, refused=answer.refused_claims)

    async def report(self, worker_id: str, reports: Sequence[TaskReport]) -> ReportResponse:
        answer = await self.exchange(worker_id, reports, [])
        return ReportResponse(accepted=answer.accepted, refused=answer.refused_reports)

    async def _settle(
        self,
        worker_id: str,
        reports: Sequence[TaskReport],
        answer: ExchangeResponse,
        to_queue: list[ReadyTask],
        orphans: list[tuple[str, str, str]],
    ) -> None:
        """Make Redis follow what was committed: ended attempts and refused claims give their
        leases up (only where they still own them), started attempts (and running `orphans`,
        see _refused) take theirs."""
        released = [(r.task_id, lease_token(worker_id, r.attempt)) for r in reports]
        released += [(task_id, claim_token(worker_id)) for task_id in answer.refused_claims]
        held = [(t.task_id, t.task_type, lease_token(worker_id, t.attempt)) for t in answer.started]
        held += orphans
        await self.queue.settle(released, held)
        if to_queue:
            await self.queue.enqueue(to_queue)

    def _observe(
        self,
        worker_id: str,
        rows: Sequence[Any],
        answer: ExchangeResponse,
        now: datetime,
        reports: Sequence[TaskReport],
    ) -> None:
        for r in rows:
            monitoring.QUEUE_WAIT.observe((now - r.created_at).total_seconds())
        if answer.refused_claims:
            log.info("claim.refused", worker_id=worker_id, task_ids=answer.refused_claims)
        if not answer.refused_reports:
            return
        outcomes = {r.task_id: r.outcome for r in reports}
        for task_id in answer.refused_reports:
            monitoring.STALE_REPORTS.inc()
            # A worker confirming a cancel finds the attempt already ended by it: expected.
            if outcomes.get(task_id) == AttemptOutcome.CANCELLED:
                log.info("report.after_cancel", worker_id=worker_id, task_id=task_id)
            else:
                log.warning("report.stale", worker_id=worker_id, task_id=task_id)

    async def _record(
        self, conn: Any, worker_id: str, reports: Sequence[TaskReport], now: datetime
    ) -> tuple[list[str], list[ReadyTask]]:
        """Apply reports: completions in one set-based statement, the rarer endings one by one.
        Returns the ids recorded and the tasks to queue as a consequence."""
        done = [
            transitions.Completion(r.task_id, r.attempt, r.result)
            for r in reports
            if r.outcome == AttemptOutcome.COMPLETED
        ]
        accepted, to_queue = await transitions.complete_many(
            conn, done, worker_id=worker_id, now=now
        )
        monitoring.ATTEMPTS_ENDED.labels(AttemptOutcome.COMPLETED).inc(len(accepted))
        for report in reports:
            if report.outcome == AttemptOutcome.COMPLETED:
                continue
            outcome = await self._record_one(conn, worker_id, report, now)
            if outcome is not None:
                monitoring.ATTEMPTS_ENDED.labels(report.outcome).inc()
                accepted.append(report.task_id)
                to_queue += outcome
        return accepted, to_queue

    async def _record_one(
        self, conn: Any, worker_id: str, report: TaskReport, now: datetime
    ) -> list[ReadyTask] | None:
        """Apply one report that is not a completion; returns tasks to queue, or None when stale
        (or not this worker's attempt)."""
        if report.outcome == AttemptOutcome.RELEASED:
            ready = await transitions.requeue(
                conn,
                report.task_id,
                report.attempt,
                outcome=report.outcome,
                now=now,
                worker_id=worker_id,
            )
            return None if ready is None else [ready]
        if retry_policy.is_retryable(report.outcome):
            ready = await transitions.retry(
                conn,
                report.task_id,
                report.attempt,
                outcome=report.outcome,
                error=report.error,
                policy=self.retry_policy,
                now=now,
                worker_id=worker_id,
            )
            if ready is not None:
                return [ready]
        doomed = await transitions.fail(
            conn,
            report.task_id,
            report.attempt,
            outcome=report.outcome,
            error=report.error,
            now=now,
            worker_id=worker_id,
        )
        return None if doomed is None else []


def _to_run(row: Any, dependency_results: dict[str, Any] | None) -> TaskToRun:
    return TaskToRun(
        task_id=row.task_id,
        task_type=row.task_type,
        payload=row.payload,
        attempt=row.attempt,
        timeout=row.timeout,
        correlation_id=row.correlation_id,
        dependency_results=dependency_results or {},
    )


def _missing(asked: Sequence[str], granted: Sequence[str]) -> list[str]:
    kept = set(granted)
    return [task_id for task_id in asked if task_id not in kept]
