"""Worker node: `python worker/worker_node.py --worker-id worker-1` (or `python -m worker`).

Loop: claim as many tasks as there are free slots (never more: no hoarding, so priorities hold
across workers), confirm them with the API, run them, report. Idle workers block on Redis."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `app` and `worker` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import importlib
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import structlog
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import get_settings
from app.models.logs import ShippedLine
from app.models.task import AttemptOutcome, TaskReport, TaskToRun
from app.models.worker import RegisterResponse, WorkerHeartbeat, WorkerRegister, WorkerStatus
from app.services.message_queue import Claim, Lease, RedisQueue, claim_token, lease_token
from app.utils.logging_config import configure_logging
from worker import builtin_tasks, metrics
from worker.api_client import SchedulerClient, WorkerUnknown
from worker.health_monitor import CpuSampler, LeaseKeeper, claim_budget, system_info
from worker.log_capture import LogBook
from worker.task_executor import TaskExecutor
from worker.transport import HttpTransport, LocalTransport, Rejected, Transport, Unavailable

log = structlog.get_logger(__name__)
REPORT_BATCH = 500
REPORT_FLUSH_SECONDS = 10.0
IDLE_POLL = 1.0  # an idle worker looks at its queues at least this often, token or not
MIN_BACKOFF, MAX_BACKOFF = 0.1, 5.0
LOOP_BEAT = 0.5  # how often the event loop proves to the lease keeper that it runs


@dataclass
class WorkerOptions:
    worker_id: str
    api_url: str
    capabilities: list[str] | None = None
    max_concurrent_tasks: int = 10
    redis_url: str | None = None
    heartbeat_interval: float | None = None
    grace_period: float = 30.0
    high_cpu_percent: float = 90.0
    pool_size: int = 10
    task_modules: list[str] = field(default_factory=list)
    database_url: str | None = None
    api_key: str | None = None
    task_log_max_bytes: int = 1024 * 1024
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


class WorkerNode:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.worker_id = options.worker_id
        self.api = SchedulerClient(options.api_url, api_key=options.api_key)
        # What handlers print and log, per attempt, shipped with the exchanges.
        self.logbook = LogBook(options.task_log_max_bytes)
        # More threads than slots: an abandoned (timed-out) sync handler must not starve the rest.
        self.executor = TaskExecutor(
            pool_size=max(options.pool_size, 2 * options.max_concurrent_tasks),
            logbook=self.logbook,
        )
        self.capabilities = options.capabilities or self.executor.task_types
        self.running: dict[str, tuple[TaskToRun, asyncio.Task[None]]] = {}
        self.claimed: dict[str, Claim] = {}  # claimed in Redis, their start in flight
        self.outbox: dict[str, TaskReport] = {}  # finished attempts not yet sent
        self.sending: dict[str, TaskReport] = {}  # reports in the exchange in flight
        self.wake = asyncio.Event()  # the pump has something to do: a report, a slot, a stop
        self.stopping = asyncio.Event()
        self.hard_stop = asyncio.Event()
        self.closing = asyncio.Event()
        self.cancel_requested: set[str] = set()
        self.paused_until = 0.0  # the scheduler was unavailable: no exchange before this time
        self.deadlines: dict[str, float] = {}  # task id -> monotonic time its lease stops
        self.loop_beat = time.monotonic()
        # Last time the scheduler answered (an exchange, a heartbeat, a probe): see held_leases.
        self.last_contact = time.monotonic()
        self.lease_seconds = 5.0  # the API's, from the registration
        self.renew_every = 5.0 / 3  # the API's, from the registration
        self.backoff = MIN_BACKOFF
        self.cpu = CpuSampler()
        self.queue: RedisQueue | None = None
        self.waiter: WorkWaiter | None = None
        self.transport: Transport | None = None
        self.lease_keeper: LeaseKeeper | None = None

    def held_leases(self) -> list[Lease]:
        """The leases to keep: running attempts within their deadline, finished ones not yet
        recorded, and claims being started. None at all while the event loop is blocked (an async
        handler that never yields): its tasks must go to a worker that can run them. Called from
        the lease keeper's thread, so it reads copies (atomic in CPython)."""
        now = time.monotonic()
        if now - self.loop_beat > self.lease_seconds:
            log.error("worker.loop_blocked", seconds=round(now - self.loop_beat, 1))
            return []
        deadlines = dict(self.deadlines)
        attempts = [job for job, _handle in list(self.running.values())]
        ended = [*list(self.outbox.values()), *list(self.sending.values())]
        held = [
            *(
                (j.task_id, lease_token(self.worker_id, j.attempt))
                for j in attempts
                if deadlines.get(j.task_id, now) >= now  # overran: let the sweeper take it
            ),
            *((r.task_id, lease_token(self.worker_id, r.attempt)) for r in ended),
            *((task_id, claim_token(self.worker_id)) for task_id in list(self.claimed)),
        ]
        # An idle worker hears from nobody between heartbeats, and needs to: it holds nothing.
        if held and now - self.last_contact > self.lease_seconds:
            # Cut off from the scheduler (a partition that spares Redis): nothing it runs here
            # can be reported, so its tasks must go to workers that can.
            log.error("worker.cut_off", seconds=round(now - self.last_contact, 1))
            return []
        return held

    async def _beat(self) -> None:
        """Proof that the event loop runs, for the lease keeper's thread (see held_leases)."""
        while True:
            self.loop_beat = time.monotonic()
            await asyncio.sleep(LOOP_BEAT)

    def _touched(self) -> None:
        self.last_contact = time.monotonic()

    async def _keep_in_touch(self) -> None:
        """While it holds leases, make sure the worker hears from the scheduler at least once
        per renewal period (a probe when no exchange or heartbeat did), so that held_leases
        knows whether it is cut off. An idle worker holds nothing and probes nothing."""
        assert self.transport is not None
        while True:
            await asyncio.sleep(self.renew_every)
            quiet = time.monotonic() - self.last_contact >= self.renew_every
            if quiet and (self.running or self.outbox or self.sending or self.claimed):
                try:
                    await self.transport.probe()
                    self._touched()
                except Unavailable as exc:
                    log.warning("scheduler.unreachable", error=str(exc))

    async def run(self) -> None:
        registration = await self._register()
        redis_url = self.options.redis_url or registration.redis_url
        redis = Redis.from_url(redis_url, socket_connect_timeout=5, health_check_interval=15)
        self.queue = RedisQueue(
            redis, prefix=registration.redis_prefix, lease_seconds=registration.lease_seconds
        )
        self.waiter = WorkWaiter(self.queue, self.capabilities)
        self.lease_seconds = registration.lease_seconds
        self.renew_every = registration.lease_renew_interval
        self.transport = self._transport(registration, redis)
        self.lease_keeper = LeaseKeeper(
            redis_url=redis_url,
            keys=self.queue.keys,
            lease_seconds=registration.lease_seconds,
            renew_every=registration.lease_renew_interval,
            held=self.held_leases,
            cpu=self.cpu,
        )
        self.lease_keeper.start()
        if self.options.metrics_port is not None:
            metrics.serve(
                self.options.metrics_port,
                self.options.metrics_host,
                slots=self.options.max_concurrent_tasks,
                used=lambda: len(self.running),
                pending=lambda: len(self.outbox) + len(self.sending),
            )
        interval = self.options.heartbeat_interval or registration.heartbeat_interval
        heartbeats = asyncio.create_task(self._heartbeat_loop(interval))
        helpers = [
            asyncio.create_task(self._pump(), name="pump"),
            asyncio.create_task(self._cancel_loop(), name="cancel-listener"),
            asyncio.create_task(self._beat(), name="loop-beat"),
            asyncio.create_task(self._keep_in_touch(), name="keep-in-touch"),
        ]
        log.info(
            "worker.started",
            worker_id=self.worker_id,
            capabilities=self.capabilities,
            max_concurrent_tasks=self.options.max_concurrent_tasks,
            transport=type(self.transport).__name__,
        )
        try:
            await self._until_stopped(helpers)
            await self._drain()
        finally:
            # Let a heartbeat in flight land before deregistering: cancelled mid-request, it
            # could reach the API after the deregistration and mark the worker alive again.
            self.closing.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(heartbeats), timeout=10)
            for helper in [*helpers, heartbeats]:
                helper.cancel()
            await asyncio.gather(*helpers, heartbeats, return_exceptions=True)
            await self._close()

    def _transport(self, registration: RegisterResponse, redis: Redis) -> Transport:
        if self.options.database_url:
            return LocalTransport.connect(self.options.database_url, registration, redis)
        return HttpTransport(self.api)

    async def _until_stopped(self, helpers: list[asyncio.Task[None]]) -> None:
        """Wait for a stop request. A helper loop that dies stops the worker loudly: a worker that
        claims but cannot report (or cannot hear cancels) must not stay half-alive."""
        stop = asyncio.create_task(self.stopping.wait())
        done, _pending = await asyncio.wait([stop, *helpers], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for helper in helpers:
            if helper in done:
                log.critical("worker.helper_died", helper=helper.get_name())
                helper.result()  # raises what killed it
                raise RuntimeError("a worker loop ended unexpectedly")

    async def _register(self) -> RegisterResponse:
        spec = WorkerRegister(
            worker_id=self.worker_id,
            capabilities=self.capabilities,
            max_concurrent_tasks=self.options.max_concurrent_tasks,
            hostname=socket.gethostname(),
        )
        registration = await self.api.register(spec)
        self._touched()
        return registration

    # --- the pump: claims and reports, one exchange at a time --------------------------------

    async def _pump(self) -> None:
        """The worker's one loop: claim what the free slots allow and send it, together with
        every finished attempt's report, in one exchange (one transaction). While an exchange is
        in flight, what finishes and what frees up gathers for the next one (group commit)."""
        while True:
            await self._wait_out_pause()
            # One pass of the event loop first: attempts that end together (a burst of short
            # tasks started by one exchange) then report together instead of one by one.
            await asyncio.sleep(0)
            claims = await self._claim()
            reports = self._take_outbox()
            logs = self._take_logs(reports)
            if claims or reports or logs:
                await self._exchange(reports, claims, logs)
            else:
                await self._idle()

    def _free_slots(self) -> int:
        if self.stopping.is_set():
            return 0
        return claim_budget(
            free_slots=self.options.max_concurrent_tasks - len(self.running) - len(self.claimed),
            max_slots=self.options.max_concurrent_tasks,
            cpu_percent=self.cpu.process_percent,
            high_cpu_percent=self.options.high_cpu_percent,
        )

    async def _claim(self) -> list[Claim]:
        assert self.queue is not None
        free = self._free_slots()
        if free <= 0:
            return []
        try:
            claims = await self.queue.claim_scored(self.worker_id, self.capabilities, free)
        except (RedisError, OSError) as exc:
            self._pause("redis.unavailable", exc)
            return []
        self.claimed.update((c.task_id, c) for c in claims)
        return claims

    def _take_outbox(self) -> list[TaskReport]:
        reports = list(itertools.islice(self.outbox.values(), REPORT_BATCH))
        for report in reports:
            del self.outbox[report.task_id]
            self.sending[report.task_id] = report
        return reports

    def _take_logs(self, reports: list[TaskReport]) -> list[ShippedLine]:
        """Captured lines ride along with reports; alone, only when due (LogBook.due)."""
        if reports or self.logbook.due():
            return self.logbook.take()
        return []

    async def _exchange(
        self, reports: list[TaskReport], claims: list[Claim], logs: Sequence[ShippedLine] = ()
    ) -> None:
        assert self.transport is not None
        try:
            answer = await self.transport.exchange(
                self.worker_id, reports, [c.task_id for c in claims], logs
            )
        except Unavailable as exc:
            self.logbook.put_back(list(logs))
            await self._give_back(reports, claims, keep_reports=True)
            self._pause("exchange.unavailable", exc)
            return
        except Rejected as exc:
            # A 4xx will not get better by retrying. Letting go frees the leases: the tasks are
            # re-run elsewhere rather than held here forever. The reports are retried alone,
            # without the log lines, which are dropped: they must not cost a report twice.
            log.error(
                "exchange.rejected",
                error=str(exc),
                task_ids=[r.task_id for r in reports],
                log_lines_dropped=len(logs),
            )
            await self._give_back(reports, claims, keep_reports=False)
            if len(reports) > 1 or (reports and logs):
                await self._report_alone(reports)
            return
        if reports or claims:  # the store swallows log failures: no proof of contact alone
            self._touched()
        self.backoff = MIN_BACKOFF
        for report in reports:
            self.sending.pop(report.task_id, None)
        cancelled = {r.task_id for r in reports if r.outcome == AttemptOutcome.CANCELLED}
        for task_id in answer.refused_reports:
            if task_id in cancelled:  # the cancel already ended the attempt: nothing went wrong
                log.info("report.after_cancel", task_id=task_id)
            else:
                log.warning("report.refused", task_id=task_id, reason="attempt superseded")
        for claim in claims:
            self.claimed.pop(claim.task_id, None)
        for job in answer.started:
            if job.task_id not in self.running:  # a duplicate claim of our own running attempt
                # Past this the lease is no longer renewed, whatever the handler does: the
                # executor's own timeout should have ended it long before.
                self.deadlines[job.task_id] = time.monotonic() + job.timeout + self.lease_seconds
                self.running[job.task_id] = (job, asyncio.create_task(self._run_one(job)))

    async def _report_alone(self, reports: list[TaskReport]) -> None:
        """After a refused batch, each report once on its own: a bad one costs only itself,
        never the rest of its batch. Those refused again are dropped (their tasks run again
        once their leases lapse); those met by an outage wait in the outbox as usual."""
        assert self.transport is not None
        for report in reports:
            try:
                await self.transport.exchange(self.worker_id, [report], [])
            except Unavailable:
                self.outbox[report.task_id] = report
            except Rejected as exc:
                log.error("report.rejected", task_id=report.task_id, error=str(exc))

    async def _give_back(
        self, reports: list[TaskReport], claims: list[Claim], *, keep_reports: bool
    ) -> None:
        """Claims go back to their place in their queues; reports wait for the next exchange."""
        assert self.queue is not None
        for report in reports:
            self.sending.pop(report.task_id, None)
            if keep_reports:
                self.outbox[report.task_id] = report
        try:
            await self.queue.unclaim(self.worker_id, claims)
        except (RedisError, OSError) as exc:  # then their leases lapse and the sweeper does it
            log.warning("claim.unclaim_failed", error=str(exc))
        for claim in claims:
            self.claimed.pop(claim.task_id, None)

    def _pause(self, event: str, exc: Exception) -> None:
        """Stop exchanging for a while: claiming on would drain the queues into lapsing leases,
        and retrying at once would hammer a scheduler that is down."""
        log.warning(event, error=str(exc), retry_in=round(self.backoff, 2))
        self.paused_until = asyncio.get_running_loop().time() + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    async def _wait_out_pause(self) -> None:
        remaining = self.paused_until - asyncio.get_running_loop().time()
        if remaining > 0:
            await _wait_any(self.hard_stop, timeout=remaining)

    async def _idle(self) -> None:
        """Wait for a finished attempt, a freed slot or a stop; with free slots, also for new
        work (a wake-up token from Redis). A second look at the queue follows either way."""
        assert self.waiter is not None
        self.wake.clear()
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wake.wait())]
        can_claim = self._free_slots() > 0
        if can_claim:
            waits.append(self.waiter.arm())
        try:
            await asyncio.wait(waits, timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waits[0].cancel()
        await self.waiter.collect(can_take=self._free_slots() > 0)

    async def _run_one(self, job: TaskToRun) -> None:
        with structlog.contextvars.bound_contextvars(
            task_id=job.task_id, correlation_id=job.correlation_id, attempt=job.attempt
        ):
            log.info("task.started", task_type=job.task_type)
            began = time.monotonic()
            try:
                report = await self.executor.execute(job)
            except asyncio.CancelledError:
                report = self._interrupted(job)
            log.info("task.finished", outcome=report.outcome, error=report.error)
            if self.options.metrics_port is not None:
                metrics.observe(job.task_type, report.outcome, time.monotonic() - began)
        self.outbox[job.task_id] = report
        self.running.pop(job.task_id, None)
        self.deadlines.pop(job.task_id, None)
        self.wake.set()

    def _interrupted(self, job: TaskToRun) -> TaskReport:
        """The attempt was stopped: by a cancel request, or by shutdown (then it is handed back)."""
        self.executor.abandon(job.task_type)
        if job.task_id in self.cancel_requested:
            self.cancel_requested.discard(job.task_id)
            outcome, reason = AttemptOutcome.CANCELLED, "cancelled by request"
        else:
            outcome, reason = AttemptOutcome.RELEASED, "worker shutting down"
        return TaskReport(task_id=job.task_id, attempt=job.attempt, outcome=outcome, error=reason)

    async def _cancel_loop(self) -> None:
        """Listen for cancel requests; an attempt of ours that was cancelled is stopped."""
        assert self.queue is not None
        backoff = 0.5
        while True:
            try:
                async with self.queue.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.queue.keys.cancel_channel)
                    backoff = 0.5
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._cancel_local(orjson.loads(message["data"]))
            except (RedisError, OSError) as exc:
                log.warning("cancel_listener.reconnecting", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _cancel_local(self, request: dict[str, object]) -> None:
        entry = self.running.get(str(request.get("task_id")))
        if entry is None or entry[0].attempt != request.get("attempt"):
            return
        job, handle = entry
        log.info("task.cancel_requested", task_id=job.task_id, attempt=job.attempt)
        self.cancel_requested.add(job.task_id)
        handle.cancel()

    # --- heartbeats ----------------------------------------------------------------------------

    async def _heartbeat_loop(self, interval: float) -> None:
        while not self.closing.is_set():
            beat = WorkerHeartbeat(
                status=WorkerStatus.DRAINING if self.stopping.is_set() else WorkerStatus.ACTIVE,
                current_tasks=list(self.running),
                system_info=system_info(self.cpu),
            )
            try:
                await self.api.heartbeat(self.worker_id, beat)
                self._touched()
            except WorkerUnknown:
                if self.stopping.is_set():
                    break  # deregistered or forgotten while draining: nothing to come back to
                log.warning("worker.unknown_to_api", action="registering again")
                await self._register()
            except (ConnectionError, OSError, httpx.HTTPError) as exc:
                log.warning("heartbeat.failed", error=str(exc))
            await _wait_any(self.closing, timeout=interval)

    # --- shutdown ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self.stopping.is_set():
            log.warning("worker.hard_stop")
            self.hard_stop.set()
        else:
            log.info("worker.stopping", grace_period=self.options.grace_period)
            self.stopping.set()
        self.wake.set()

    async def _drain(self) -> None:
        """Let running tasks finish within the grace period; hand the rest back at once; then
        let the pump deliver every report (bounded), so the scheduler requeues hand-backs now
        rather than after their leases expire."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.grace_period
        while self.claimed and loop.time() < deadline:  # an exchange in flight may start more
            await asyncio.sleep(0.05)
        running = [t for _job, t in self.running.values()]
        if running:
            all_done = asyncio.ensure_future(asyncio.wait(running))
            hard = asyncio.ensure_future(self.hard_stop.wait())
            await asyncio.wait(
                [all_done, hard],
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            all_done.cancel()
            hard.cancel()
        for _job, handle in list(self.running.values()):
            handle.cancel()
        await asyncio.gather(*(t for _j, t in list(self.running.values())), return_exceptions=True)
        flush_until = loop.time() + REPORT_FLUSH_SECONDS
        while (self.outbox or self.sending or self.logbook.pending()) and loop.time() < flush_until:
            await asyncio.sleep(0.05)
        if self.outbox or self.sending:
            log.warning("worker.unreported_at_exit", task_ids=[*self.outbox, *self.sending])

    async def _close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.api.deregister(self.worker_id)
        if self.lease_keeper is not None:
            await asyncio.to_thread(self.lease_keeper.stop)
        if self.waiter is not None:
            await self.waiter.close()
        if self.transport is not None:
            await self.transport.close()
        if self.queue is not None:
            await self.queue.redis.aclose()
        await self.api.close()
        self.executor.shutdown()
        log.info("worker.stopped", worker_id=self.worker_id)


class WorkWaiter:
    """Keeps one BLPOP on the wake-up lists in flight across the pump's waits: cancelling a
    blocking command would cost its connection. A token taken while the worker has no free slot
    is pushed back, so that an idle worker gets it instead of waiting for its own timeout."""

    def __init__(self, queue: RedisQueue, task_types: Sequence[str]) -> None:
        self.queue = queue
        self.task_types = list(task_types)
        self._pending: asyncio.Task[str | None] | None = None

    def arm(self) -> asyncio.Task[str | None]:
        if self._pending is None:
            self._pending = asyncio.create_task(
                self.queue.pop_wake(self.task_types, timeout=IDLE_POLL)
            )
        return self._pending

    async def collect(self, *, can_take: bool) -> None:
        if self._pending is None or not self._pending.done():
            return
        done, self._pending = self._pending, None
        try:
            key = done.result()
        except (RedisError, OSError) as exc:
            log.warning("redis.unavailable", error=str(exc))
            await asyncio.sleep(MIN_BACKOFF)  # the next claim reports and pauses properly
            return
        if key is not None and not can_take:
            with contextlib.suppress(RedisError, OSError):
                await self.queue.push_wake(key)

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class WorkerEnv(BaseSettings):
    """The worker's own variables, from the environment or `.env` like every other setting
    (the environment wins). Not in app.config.Settings: the API has no use for them."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    api_url: str = "http://localhost:8000"
    api_key: str | None = None
    # Unset: the Redis the API announces at registration.
    redis_url: str | None = None
    worker_high_cpu_percent: float = 90.0


def parse_args(argv: Sequence[str] | None = None) -> WorkerOptions:
    settings = get_settings()
    env = WorkerEnv()
    parser = argparse.ArgumentParser(description="Run a task scheduler worker node.")
    parser.add_argument("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument(
        "--api-url",
        default=env.api_url,
        help="the scheduler API; several replicas comma-separated (a,b,c): the worker fails "
        "over to the next on connection errors and 5xx (env API_URL, else .env; now "
        "%(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=env.api_key,
        help="a key with the worker scope, sent as a Bearer token (env API_KEY; prefer the "
        "variable: a command line is visible to other users of the machine)",
    )
    parser.add_argument(
        "--capabilities", default=None, help="comma-separated task types (default: all known)"
    )
    parser.add_argument(
        "--max-concurrent-tasks",
        type=int,
        default=settings.max_workers,
        help="tasks run at once (default: MAX_WORKERS, %(default)s)",
    )
    parser.add_argument(
        "--tasks", action="append", default=[], help="module with @task handlers (repeatable)"
    )
    parser.add_argument(
        "--grace-period", type=float, default=30.0, help="seconds to finish tasks on SIGTERM"
    )
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    parser.add_argument(
        "--database-url",
        default=settings.worker_database_url,
        help="run the guarded transitions in this process against this database instead of "
        "through the API (env WORKER_DATABASE_URL; see docs/architecture.md)",
    )
    parser.add_argument(
        "--high-cpu-percent",
        type=float,
        default=env.worker_high_cpu_percent,
        help="this worker process's CPU (%% of one core) above which it fills only half its "
        "slots (>100: never)",
    )
    parser.add_argument(
        "--task-log-max-bytes",
        type=int,
        default=settings.task_log_max_bytes,
        help="what a handler may print and log per attempt; past it lines are dropped and "
        "counted (env TASK_LOG_MAX_BYTES, default %(default)s; 0: capture nothing)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics of this worker on this port (default: off)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics endpoint (default %(default)s; 0.0.0.0 for every address)",
    )
    args = parser.parse_args(argv)
    if args.task_log_max_bytes < 0:
        parser.error("--task-log-max-bytes must be 0 or more")
    capabilities = (
        [c.strip() for c in args.capabilities.split(",") if c.strip()]
        if args.capabilities
        else None
    )
    return WorkerOptions(
        worker_id=args.worker_id,
        api_url=args.api_url,
        capabilities=capabilities,
        max_concurrent_tasks=args.max_concurrent_tasks,
        redis_url=env.redis_url or None,
        # Unset: the interval the API announces at registration, so both sides agree on it.
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        high_cpu_percent=args.high_cpu_percent,
        pool_size=settings.max_workers,
        task_modules=args.tasks,
        database_url=args.database_url,
        api_key=args.api_key or None,
        task_log_max_bytes=args.task_log_max_bytes,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


async def serve(options: WorkerOptions) -> None:
    for module in options.task_modules:
        importlib.import_module(module)
    node = WorkerNode(options)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, node.request_stop)
    await node.run()


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    configure_logging(get_settings().log_level, service="worker")
    structlog.contextvars.bind_contextvars(worker_id=options.worker_id)
    assert builtin_tasks  # imported for its registrations
    sys.path.insert(0, os.getcwd())  # --tasks modules resolve from where the worker was started
    asyncio.run(serve(options))
    # A sync handler stuck in a thread (or a process-pool child) would keep the interpreter alive
    # at exit; every attempt was reported or handed back by now, so leave without joining them.
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
