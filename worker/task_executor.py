"""The handler registry (`@task`) and the engine that runs one attempt of a task.

Handlers run where they hurt least: coroutines on the event loop, plain functions in a thread
pool, CPU-heavy functions (mode="process") in a process pool so they neither block the loop nor
hold the GIL. Every attempt ends in a TaskReport; no exception escapes `execute`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import structlog

from app.models.task import AttemptOutcome, TaskReport, TaskToRun

log = structlog.get_logger(__name__)

Mode = Literal["async", "thread", "process"]
Handler = Callable[..., Any]


class TaskFailure(Exception):
    """Raise to fail a task with exactly this message as its error."""


@dataclass(frozen=True)
class TaskContext:
    """What a handler may want besides its payload. Picklable, so process handlers get it too."""

    task_id: str
    attempt: int
    correlation_id: str | None = None
    dependency_results: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    name: str
    func: Handler
    mode: Mode
    wants_context: bool


REGISTRY: dict[str, Registration] = {}


def task(name: str, *, mode: Mode | None = None) -> Callable[[Handler], Handler]:
    """Register a handler for a task type. Signature: `(payload)` or `(payload, context)`.

    mode defaults to "async" for coroutine functions and "thread" otherwise; use "process" for
    CPU-bound work (the function must be defined at module level, importable by name)."""

    def register(func: Handler) -> Handler:
        chosen: Mode = mode or ("async" if inspect.iscoroutinefunction(func) else "thread")
        wants_context = len(inspect.signature(func).parameters) >= 2
        REGISTRY[name] = Registration(name, func, chosen, wants_context)
        return func

    return register


def _call(registration: Registration, payload: dict[str, Any], context: TaskContext) -> Any:
    args = (payload, context) if registration.wants_context else (payload,)
    return registration.func(*args)


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _ignore_stop_signals() -> None:
    """Pool processes leave stopping to their worker: a SIGTERM or Ctrl-C sent to the whole
    process group must not kill a task the worker means to finish within its grace period (the
    worker kills its pool itself once it is done with it). The signals arrive blocked (see
    _submit_with_stop_signals_blocked), so one sent while the process started is dropped here."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _submit_with_stop_signals_blocked(
    pool: concurrent.futures.ProcessPoolExecutor, *args: Any
) -> concurrent.futures.Future[Any]:
    """Submitting may start pool processes, which inherit this thread's signal mask: blocked,
    a group SIGTERM cannot kill them before their initializer ignores it. The parent gets any
    such signal as soon as the mask is restored, a moment later."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return pool.submit(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _call_in_process(
    func: Handler, wants_context: bool, payload: dict[str, Any], context: TaskContext
) -> Any:
    return func(payload, context) if wants_context else func(payload)


class TaskExecutor:
    def __init__(self, *, pool_size: int) -> None:
        self.threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size, thread_name_prefix="task"
        )
        self._process_size = max(1, min(pool_size, os.cpu_count() or 1))
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None

    @property
    def task_types(self) -> list[str]:
        return sorted(REGISTRY)

    def _process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._processes is None:
            # spawn, not fork: forking a process that runs threads and an event loop can deadlock.
            context = multiprocessing.get_context("spawn")
            self._processes = concurrent.futures.ProcessPoolExecutor(
                self._process_size, mp_context=context, initializer=_ignore_stop_signals
            )
        return self._processes

    async def execute(self, job: TaskToRun) -> TaskReport:
        """Run one attempt within its timeout; always returns the report of how it ended."""
        registration = REGISTRY.get(job.task_type)
        if registration is None:
            return _report(
                job, AttemptOutcome.ERROR, error=f"no handler for task type '{job.task_type}'"
            )
        context = TaskContext(job.task_id, job.attempt, job.correlation_id, job.dependency_results)
        try:
            # asyncio.timeout, not wait_for: no extra task per attempt on the hot path.
            async with asyncio.timeout(job.timeout):
                result = await self._dispatch(registration, job.payload, context)
        except TimeoutError:
            self._after_timeout(registration)
            return _report(job, AttemptOutcome.TIMEOUT, error=f"timed out after {job.timeout}s")
        except TaskFailure as exc:
            return _report(job, AttemptOutcome.ERROR, error=str(exc))
        except BrokenProcessPool:
            self._processes = None
            return _report(
                job, AttemptOutcome.ERROR, error="worker process died while running the task"
            )
        except Exception as exc:  # a handler's failure is data for the report, not a crash
            return _report(job, AttemptOutcome.ERROR, error=f"{type(exc).__name__}: {exc}")
        try:
            encoded = orjson.loads(orjson.dumps(result))
        except TypeError as exc:
            return _report(
                job, AttemptOutcome.ERROR, error=f"result is not JSON serialisable: {exc}"
            )
        return _report(job, AttemptOutcome.COMPLETED, result=encoded)

    async def _dispatch(
        self, registration: Registration, payload: dict[str, Any], context: TaskContext
    ) -> Any:
        if registration.mode == "async":
            return await _call(registration, payload, context)
        loop = asyncio.get_running_loop()
        if registration.mode == "thread":
            return await loop.run_in_executor(self.threads, _call, registration, payload, context)
        future = _submit_with_stop_signals_blocked(
            self._process_pool(),
            _call_in_process,
            registration.func,
            registration.wants_context,
            payload,
            context,
        )
        return await asyncio.wrap_future(future)

    def _after_timeout(self, registration: Registration) -> None:
        """A process handler that overran is killed for real: the pool is torn down and rebuilt
        (tasks sharing it fail and are retried). A thread cannot be killed; it is abandoned."""
        if registration.mode == "process":
            self._kill_process_pool()
            log.warning("executor.process_pool_killed", task_type=registration.name)

    def abandon(self, task_type: str) -> None:
        """An attempt was cancelled from outside: make sure its work really stops. A coroutine is
        already cancelled; a process handler is killed; a thread cannot be, and runs to its end
        unobserved (its slot is freed: the thread pool is sized beyond the task slots)."""
        registration = REGISTRY.get(task_type)
        if registration is not None and registration.mode == "process":
            self._kill_process_pool()

    def _kill_process_pool(self) -> None:
        pool, self._processes = self._processes, None
        if pool is None:
            return
        # ProcessPoolExecutor offers no way to stop a running call; killing its processes is the
        # only real stop (the alternative, waiting, is what a timeout exists to avoid).
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        self._kill_process_pool()


def _report(
    job: TaskToRun, outcome: AttemptOutcome, *, result: Any = None, error: str | None = None
) -> TaskReport:
    return TaskReport(
        task_id=job.task_id, attempt=job.attempt, outcome=outcome, result=result, error=error
    )
