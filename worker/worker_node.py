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
import os
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import get_settings
from app.models.task import AttemptOutcome, TaskReport, TaskToRun
from app.models.worker import RegisterResponse, WorkerHeartbeat, WorkerRegister, WorkerStatus
from app.services.message_queue import RedisQueue
from app.utils.logging_config import configure_logging
from worker import builtin_tasks
from worker.api_client import SchedulerClient, WorkerUnknown
from worker.health_monitor import CpuSampler, LeaseKeeper, claim_budget, system_info
from worker.task_executor import TaskExecutor

log = structlog.get_logger(__name__)
REPORT_BATCH = 500
REPORT_FLUSH_SECONDS = 10.0


@dataclass
class WorkerOptions:
    worker_id: str
    api_url: str
    capabilities: list[str] | None = None
    max_concurrent_tasks: int = 5
    redis_url: str | None = None
    heartbeat_interval: float | None = None
    grace_period: float = 30.0
    high_cpu_percent: float = 90.0
    pool_size: int = 10
    task_modules: list[str] = field(default_factory=list)


class WorkerNode:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.worker_id = options.worker_id
        self.api = SchedulerClient(options.api_url)
        # More threads than slots: an abandoned (timed-out) sync handler must not starve the rest.
        self.executor = TaskExecutor(
            pool_size=max(options.pool_size, 2 * options.max_concurrent_tasks)
        )
        self.capabilities = options.capabilities or self.executor.task_types
        self.running: dict[str, tuple[TaskToRun, asyncio.Task[None]]] = {}
        self.unreported: dict[str, TaskReport] = {}
        self.reports: asyncio.Queue[TaskReport] = asyncio.Queue()
        self.slot_freed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.hard_stop = asyncio.Event()
        self.closing = asyncio.Event()
        self.cancel_requested: set[str] = set()
        self.starting = 0  # claimed in Redis, confirmation by the API still in flight
        self.start_calls: set[asyncio.Task[None]] = set()
        self.cpu = CpuSampler()
        self.queue: RedisQueue | None = None
        self.lease_keeper: LeaseKeeper | None = None

    def held_task_ids(self) -> list[str]:
        """Tasks whose leases we keep: running, and finished but not yet reported."""
        return [*self.running, *self.unreported]

    async def run(self) -> None:
        registration = await self._register()
        redis_url = self.options.redis_url or registration.redis_url
        self.queue = RedisQueue(
            Redis.from_url(redis_url, socket_connect_timeout=5, health_check_interval=15),
            prefix=registration.redis_prefix,
            lease_seconds=registration.lease_seconds,
        )
        self.lease_keeper = LeaseKeeper(
            redis_url=redis_url,
            keys=self.queue.keys,
            worker_id=self.worker_id,
            lease_seconds=registration.lease_seconds,
            renew_every=registration.lease_renew_interval,
            held=self.held_task_ids,
            cpu=self.cpu,
        )
        self.lease_keeper.start()
        interval = self.options.heartbeat_interval or registration.heartbeat_interval
        heartbeats = asyncio.create_task(self._heartbeat_loop(interval))
        helpers = [
            asyncio.create_task(self._report_loop()),
            asyncio.create_task(self._cancel_loop()),
        ]
        log.info(
            "worker.started",
            worker_id=self.worker_id,
            capabilities=self.capabilities,
            max_concurrent_tasks=self.options.max_concurrent_tasks,
        )
        try:
            await self._claim_loop()
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

    async def _register(self) -> RegisterResponse:
        spec = WorkerRegister(
            worker_id=self.worker_id,
            capabilities=self.capabilities,
            max_concurrent_tasks=self.options.max_concurrent_tasks,
            hostname=socket.gethostname(),
        )
        return await self.api.register(spec)

    # --- claiming ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self.queue is not None
        backoff = 0.1
        while not self.stopping.is_set():
            free = claim_budget(
                free_slots=self.options.max_concurrent_tasks - len(self.running) - self.starting,
                max_slots=self.options.max_concurrent_tasks,
                cpu_percent=self.cpu.percent,
                high_cpu_percent=self.options.high_cpu_percent,
            )
            if free <= 0:
                self.slot_freed.clear()
                await _wait_any(self.slot_freed, self.stopping, timeout=1.0)
                continue
            try:
                claimed = await self.queue.claim(self.worker_id, self.capabilities, free)
                if not claimed:
                    await self.queue.wait_for_work(self.capabilities, timeout=1.0)
                    continue
                backoff = 0.1
            except (RedisError, OSError) as exc:
                log.warning("redis.unavailable", error=str(exc), retry_in=backoff)
                await _wait_any(self.stopping, timeout=backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            # Confirm in the background and claim on: waiting for each answer would leave slots
            # idle for a round trip and send the API batches of one or two.
            self.starting += len(claimed)
            confirmation = asyncio.create_task(self._start(claimed))
            self.start_calls.add(confirmation)
            confirmation.add_done_callback(self.start_calls.discard)

    async def _start(self, claimed: Sequence[str]) -> None:
        try:
            answer = await self.api.start(self.worker_id, claimed)
        except (ConnectionError, OSError, httpx.HTTPStatusError) as exc:
            # The leases lapse and the sweeper puts these back; nothing is lost by letting go.
            log.warning("claim.start_failed", task_ids=list(claimed), error=str(exc))
            return
        finally:
            self.starting -= len(claimed)
            self.slot_freed.set()
        for job in answer.started:
            self.running[job.task_id] = (job, asyncio.create_task(self._run_one(job)))

    async def _run_one(self, job: TaskToRun) -> None:
        with structlog.contextvars.bound_contextvars(
            task_id=job.task_id, correlation_id=job.correlation_id, attempt=job.attempt
        ):
            log.info("task.started", task_type=job.task_type)
            try:
                report = await self.executor.execute(job)
            except asyncio.CancelledError:
                report = self._interrupted(job)
            log.info("task.finished", outcome=report.outcome, error=report.error)
        self.unreported[job.task_id] = report
        self.running.pop(job.task_id, None)
        self.reports.put_nowait(report)
        self.slot_freed.set()

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

    # --- reporting and heartbeats --------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            batch = [await self.reports.get()]
            while not self.reports.empty() and len(batch) < REPORT_BATCH:
                batch.append(self.reports.get_nowait())
            try:
                await self._send_reports(batch)
            except httpx.HTTPStatusError as exc:
                # A 4xx will not get better by retrying. Letting go frees the leases: the tasks
                # are re-run elsewhere rather than held here forever.
                log.error(
                    "report.rejected", status=exc.response.status_code, body=exc.response.text[:500]
                )
                for report in batch:
                    self.unreported.pop(report.task_id, None)

    async def _send_reports(self, batch: list[TaskReport], *, attempts: int | None = None) -> None:
        answer = await self.api.report(self.worker_id, batch, attempts=attempts)
        for task_id in answer.refused:
            log.warning("report.refused", task_id=task_id, reason="attempt superseded")
        for report in batch:
            self.unreported.pop(report.task_id, None)

    async def _heartbeat_loop(self, interval: float) -> None:
        while not self.closing.is_set():
            beat = WorkerHeartbeat(
                status=WorkerStatus.DRAINING if self.stopping.is_set() else WorkerStatus.ACTIVE,
                current_tasks=list(self.running),
                system_info=system_info(self.cpu),
            )
            try:
                await self.api.heartbeat(self.worker_id, beat)
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

    async def _drain(self) -> None:
        """Let running tasks finish within the grace period; hand the rest back at once."""
        if self.start_calls:  # claims being confirmed become running tasks (or are refused)
            await asyncio.wait(self.start_calls, timeout=self.options.grace_period)
        running = [t for _job, t in self.running.values()]
        if running:
            all_done = asyncio.ensure_future(asyncio.wait(running))
            hard = asyncio.ensure_future(self.hard_stop.wait())
            await asyncio.wait(
                [all_done, hard],
                timeout=self.options.grace_period,
                return_when=asyncio.FIRST_COMPLETED,
            )
            all_done.cancel()
            hard.cancel()
        for _job, handle in list(self.running.values()):
            handle.cancel()
        await asyncio.gather(*(t for _j, t in list(self.running.values())), return_exceptions=True)
        # The report loop is still running: wait for it to deliver every outcome, hand-backs
        # included, so the scheduler requeues them now rather than after their leases expire.
        deadline = asyncio.get_running_loop().time() + REPORT_FLUSH_SECONDS
        while self.unreported and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self.unreported:
            log.warning("worker.unreported_at_exit", task_ids=list(self.unreported))

    async def _close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.api.deregister(self.worker_id)
        if self.lease_keeper is not None:
            await asyncio.to_thread(self.lease_keeper.stop)
        if self.queue is not None:
            await self.queue.redis.aclose()
        await self.api.close()
        self.executor.shutdown()
        log.info("worker.stopped", worker_id=self.worker_id)


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def parse_args(argv: Sequence[str] | None = None) -> WorkerOptions:
    settings = get_settings()
    parser = argparse.ArgumentParser(description="Run a task scheduler worker node.")
    parser.add_argument("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--api-url", default=os.environ.get("API_URL", "http://localhost:8000"))
    parser.add_argument(
        "--capabilities", default=None, help="comma-separated task types (default: all known)"
    )
    parser.add_argument("--max-concurrent-tasks", type=int, default=5)
    parser.add_argument(
        "--tasks", action="append", default=[], help="module with @task handlers (repeatable)"
    )
    parser.add_argument(
        "--grace-period", type=float, default=30.0, help="seconds to finish tasks on SIGTERM"
    )
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    parser.add_argument(
        "--high-cpu-percent",
        type=float,
        default=float(os.environ.get("WORKER_HIGH_CPU_PERCENT", 90)),
        help="machine CPU %% above which the worker fills only half its slots (>100: never)",
    )
    args = parser.parse_args(argv)
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
        redis_url=os.environ.get("REDIS_URL"),
        # Unset: the interval the API announces at registration, so both sides agree on it.
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        high_cpu_percent=args.high_cpu_percent,
        pool_size=settings.max_workers,
        task_modules=args.tasks,
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
