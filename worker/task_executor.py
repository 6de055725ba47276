"""The handler registry (`@task`) and the engine that runs one attempt of a task.

Handlers run where they hurt least: coroutines on the event loop, plain functions in a thread
pool, CPU-heavy functions (mode="process") in a process pool so they neither block the loop nor
hold the GIL. Every attempt ends in a TaskReport; no exception escapes `execute`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog

from app.models.logs import LogStream
from app.models.task import AttemptOutcome, TaskReport, TaskToRun
from worker import log_capture
from worker.log_capture import AttemptLog, LogBook, RawLine

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


def _start_child(log_level: int) -> None:
    """Initializer of the pool's processes: stop signals ignored, output captured per call."""
    _ignore_stop_signals()
    log_capture.install(log_level)


@dataclass(frozen=True)
class ChildOutcome:
    """What a process handler's call returns: its result or exception, and what it wrote."""

    result: Any
    error: BaseException | None
    lines: list[RawLine]
    dropped: int


def _call_in_process(
    func: Handler,
    wants_context: bool,
    payload: dict[str, Any],
    context: TaskContext,
    log_max_bytes: int,
) -> ChildOutcome:
    """Runs in the child. A child runs one call at a time, so its attempt's log is the only one
    current in it; the lines come back with the result, or with the exception."""
    log = AttemptLog(context.task_id, context.attempt, log_max_bytes) if log_max_bytes else None
    token = log_capture.current.set(log)
    try:
        result = func(payload, context) if wants_context else func(payload)
    except Exception as exc:
        _log_failure(log, exc)
        return _child_outcome(None, exc, log)
    finally:
        log_capture.current.reset(token)
    return _child_outcome(result, None, log)


def _child_outcome(
    result: Any, error: BaseException | None, log: AttemptLog | None
) -> ChildOutcome:
    if log is None:
        return ChildOutcome(result, error, [], 0)
    return ChildOutcome(result, error, log.raw_lines(), log.dropped)


class TaskExecutor:
    def __init__(self, *, pool_size: int, logbook: LogBook | None = None) -> None:
        """`logbook`: where attempts' output is captured (None, or a zero bound: not at all)."""
        self.threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size, thread_name_prefix="task"
        )
        self.logbook = logbook if logbook is not None and logbook.enabled else None
        if self.logbook is not None:
            log_capture.install()
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
                self._process_size,
                mp_context=context,
                initializer=_start_child,
                initargs=(logging.getLogger().getEffectiveLevel(),),
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
        logbook = self.logbook
        if logbook is None:
            return await self._attempt(job, registration, context, None)
        log = logbook.open(job.task_id, job.attempt)
        token = log_capture.current.set(log)
        try:
            return await self._attempt(job, registration, context, log)
        finally:
            log_capture.current.reset(token)
            logbook.close(log)

    async def _attempt(
        self,
        job: TaskToRun,
        registration: Registration,
        context: TaskContext,
        log: AttemptLog | None,
    ) -> TaskReport:
        try:
            # asyncio.timeout, not wait_for: no extra task per attempt on the hot path.
            async with asyncio.timeout(job.timeout):
                result = await self._dispatch(registration, job.payload, context, log)
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
            if registration.mode != "process":  # the child logged it, where its frames were
                _log_failure(log, exc)
            return _report(job, AttemptOutcome.ERROR, error=f"{type(exc).__name__}: {exc}")
        try:
            encoded = orjson.loads(orjson.dumps(result))
        except TypeError as exc:
            return _report(
                job, AttemptOutcome.ERROR, error=f"result is not JSON serialisable: {exc}"
            )
        return _report(job, AttemptOutcome.COMPLETED, result=encoded)

    async def _dispatch(
        self,
        registration: Registration,
        payload: dict[str, Any],
        context: TaskContext,
        log: AttemptLog | None,
    ) -> Any:
        if registration.mode == "async":
            return await _call(registration, payload, context)
        loop = asyncio.get_running_loop()
        if registration.mode == "thread":
            # run_in_executor does not carry the context over: the thread sets the log itself.
            return await loop.run_in_executor(
                self.threads, log_capture.run_captured, log, _call, registration, payload, context
            )
        future = _submit_with_stop_signals_blocked(
            self._process_pool(),
            _call_in_process,
            registration.func,
            registration.wants_context,
            payload,
            context,
            0 if log is None else log.max_bytes,
        )
        outcome: ChildOutcome = await asyncio.wrap_future(future)
        if log is not None:
            log.absorb(outcome.lines, outcome.dropped)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

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


def _log_failure(log: AttemptLog | None, exc: Exception) -> None:
    """An unexpected exception's traceback goes to the attempt's log (the report keeps only its
    last line). A TaskFailure is the handler's own word and needs none."""
    if log is not None and not isinstance(exc, TaskFailure):
        text = "".join(traceback.format_exception(exc)).rstrip()
        log.add("ERROR", LogStream.LOG, text, datetime.now(UTC))


def _report(
    job: TaskToRun, outcome: AttemptOutcome, *, result: Any = None, error: str | None = None
) -> TaskReport:
    return TaskReport(
        task_id=job.task_id, attempt=job.attempt, outcome=outcome, result=result, error=error
    )
