"""Capture of handlers' output per attempt (worker/log_capture.py, worker/task_executor.py):
concurrent async and thread handlers never mix, process handlers bring their lines back, the
per-attempt bound drops the excess behind one marker, and logging keeps its levels."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from app.models.logs import MAX_LINE_CHARS, SEQ_PER_ATTEMPT, LogStream, ShippedLine
from app.models.task import AttemptOutcome, TaskToRun
from app.utils.logging_config import configure_logging
from worker import builtin_tasks, log_capture
from worker.log_capture import AttemptLog, LogBook, StreamRouter
from worker.task_executor import TaskExecutor, TaskFailure, task

assert builtin_tasks  # registers log_lines and log_lines_process


@task("test_logs_async")
async def _async_handler(payload: dict[str, Any]) -> None:
    for i in range(payload["lines"]):
        print(f"{payload['name']} {i}")
        await asyncio.sleep(0)  # let the other attempts write in between
    logging.getLogger("test.handler").warning("%s done", payload["name"])


@task("test_logs_thread")
def _thread_handler(payload: dict[str, Any]) -> None:
    barrier: threading.Barrier = BARRIERS[payload["barrier"]]
    for i in range(payload["lines"]):
        sys.stdout.write(f"{payload['name']} ")
        barrier.wait(timeout=5)  # every thread is mid-line here: the lines interleave
        sys.stdout.write(f"{i}\n")
    sys.stderr.write(f"{payload['name']} on stderr\n")


@task("test_logs_levels")
async def _levels_handler(payload: dict[str, Any]) -> None:
    logger = logging.getLogger("test.levels")
    logger.debug("not shown at INFO")
    logger.info("info %s", 1)
    logger.error("error %s", 2)
    structlog.get_logger("test.levels").warning("structured", size=3)
    try:
        raise ValueError("inner")
    except ValueError:
        logger.exception("caught")


@task("test_logs_crash")
def _crashing_handler(payload: dict[str, Any]) -> None:
    print("before the crash")
    raise RuntimeError("boom")


@task("test_logs_refuse")
async def _refusing_handler(payload: dict[str, Any]) -> None:
    print("refusing")
    raise TaskFailure("no")


BARRIERS: dict[str, threading.Barrier] = {}


def job(task_id: str, task_type: str, attempt: int = 1, **payload: Any) -> TaskToRun:
    return TaskToRun(
        task_id=task_id,
        task_type=task_type,
        payload=payload,
        attempt=attempt,
        timeout=30,
        correlation_id=None,
    )


@pytest.fixture
async def book() -> AsyncIterator[LogBook]:
    logbook = LogBook(1024 * 1024)
    yield logbook


@pytest.fixture
async def executor(book: LogBook) -> AsyncIterator[TaskExecutor]:
    configure_logging("INFO", service="worker")  # as the worker does before it runs anything
    # The executor routes stdout and stderr; pytest replaces them for each phase of a test, so
    # the tests route them again in their own phase (log_capture.install is idempotent).
    engine = TaskExecutor(pool_size=8, logbook=book)
    yield engine
    engine.shutdown()


def lines_of(book: LogBook) -> dict[str, list[ShippedLine]]:
    found: dict[str, list[ShippedLine]] = {}
    for line in book.take():
        found.setdefault(line.task_id, []).append(line)
    return found


async def test_concurrent_async_attempts_keep_their_own_lines(
    executor: TaskExecutor, book: LogBook
) -> None:
    log_capture.install()  # pytest swaps sys.stdout per test phase: route it in this one
    jobs = [job(f"a{n}", "test_logs_async", name=f"a{n}", lines=20) for n in range(5)]
    reports = await asyncio.gather(*(executor.execute(j) for j in jobs))
    assert {r.outcome for r in reports} == {AttemptOutcome.COMPLETED}
    found = lines_of(book)
    for n in range(5):
        name = f"a{n}"
        assert [line.message for line in found[name]] == [
            *(f"{name} {i}" for i in range(20)),
            f"{name} done",
        ]
        assert [line.line for line in found[name]] == list(range(21))
        assert {line.stream for line in found[name][:-1]} == {LogStream.STDOUT}
        assert (found[name][-1].stream, found[name][-1].level) == (LogStream.LOG, "WARNING")
    assert not book.pending()  # everything was taken, the ended attempts forgotten
    assert book.logs == {}


async def test_concurrent_thread_attempts_keep_their_own_lines(
    executor: TaskExecutor, book: LogBook
) -> None:
    log_capture.install()  # pytest swaps sys.stdout per test phase: route it in this one
    BARRIERS["t"] = threading.Barrier(4)
    jobs = [job(f"t{n}", "test_logs_thread", name=f"t{n}", lines=10, barrier="t") for n in range(4)]
    reports = await asyncio.gather(*(executor.execute(j) for j in jobs))
    assert {r.outcome for r in reports} == {AttemptOutcome.COMPLETED}
    found = lines_of(book)
    for n in range(4):
        name = f"t{n}"
        assert [(line.stream, line.message) for line in found[name]] == [
            *((LogStream.STDOUT, f"{name} {i}") for i in range(10)),
            (LogStream.STDERR, f"{name} on stderr"),
        ]
        assert found[name][-1].level == "ERROR"


async def test_process_handlers_bring_their_lines_back(
    executor: TaskExecutor, book: LogBook
) -> None:
    log_capture.install()  # pytest swaps sys.stdout per test phase: route it in this one
    jobs = [job(f"p{n}", "log_lines_process", attempt=2, parameters={"lines": 3}) for n in (1, 2)]
    reports = await asyncio.gather(*(executor.execute(j) for j in jobs))
    assert [r.outcome for r in reports] == [AttemptOutcome.COMPLETED] * 2
    found = lines_of(book)
    for task_id in ("p1", "p2"):
        got = [(line.stream, line.level, line.message) for line in found[task_id]]
        assert got == [
            (LogStream.STDOUT, "INFO", "line 0"),
            (LogStream.LOG, "INFO", "logged 0"),
            (LogStream.STDOUT, "INFO", "line 1"),
            (LogStream.LOG, "INFO", "logged 1"),
            (LogStream.STDOUT, "INFO", "line 2"),
            (LogStream.LOG, "INFO", "logged 2"),
            (LogStream.STDERR, "ERROR", "to stderr"),
            (LogStream.LOG, "WARNING", "done after 3 lines"),
        ]
        assert {line.attempt for line in found[task_id]} == {2}


async def test_a_crash_leaves_its_traceback_and_a_refusal_only_its_output(
    executor: TaskExecutor, book: LogBook
) -> None:
    log_capture.install()  # pytest swaps sys.stdout per test phase: route it in this one
    crashed = await executor.execute(job("c", "test_logs_crash"))
    refused = await executor.execute(job("r", "test_logs_refuse"))
    assert (crashed.outcome, crashed.error) == (AttemptOutcome.ERROR, "RuntimeError: boom")
    assert refused.outcome == AttemptOutcome.ERROR
    found = lines_of(book)
    assert found["c"][0].message == "before the crash"
    assert (found["c"][1].level, found["c"][1].stream) == ("ERROR", LogStream.LOG)
    assert found["c"][1].message.startswith("Traceback (most recent call last):")
    assert found["c"][1].message.endswith("RuntimeError: boom")
    assert [line.message for line in found["r"]] == ["refusing"]


async def test_logging_keeps_levels_structlog_fields_and_tracebacks(
    executor: TaskExecutor, book: LogBook
) -> None:
    log_capture.install()  # pytest swaps sys.stdout per test phase: route it in this one
    report = await executor.execute(job("l", "test_logs_levels"))
    assert report.outcome == AttemptOutcome.COMPLETED
    got = [(line.level, line.message.splitlines()[0]) for line in lines_of(book)["l"]]
    assert got == [
        ("INFO", "info 1"),
        ("ERROR", "error 2"),
        ("WARNING", "structured size=3"),
        ("ERROR", "caught"),
    ]


def test_the_bound_drops_the_excess_and_one_marker_says_how_much() -> None:
    log = AttemptLog("b", 1, max_bytes=20)
    log.write(LogStream.STDOUT, "123456789\n")  # 10 bytes with its newline
    log.write(LogStream.STDOUT, "abcdefghi\n")  # 20: the bound exactly
    log.write(LogStream.STDOUT, "x\n")  # 2 over
    log.add("INFO", LogStream.LOG, "ééé", datetime.now(UTC))  # 6 bytes in UTF-8, + 1
    log.close()
    messages = [line.message for line in log.pending]
    assert messages[:2] == ["123456789", "abcdefghi"]
    assert len(messages) == 3
    assert "9 bytes dropped" in messages[2]
    assert log.pending[2].level == "WARNING"


def test_long_lines_are_split_and_text_made_storable() -> None:
    log = AttemptLog("s", 3, max_bytes=1024 * 1024)
    log.write(LogStream.STDOUT, "y" * (MAX_LINE_CHARS + 5) + "\n")
    log.write(LogStream.STDERR, "nul\x00 and \udc80 lone surrogate\r\n")
    log.write(LogStream.STDOUT, "no newline yet")
    assert len(log.pending) == 3  # the unfinished line waits
    log.close()
    lines = list(log.pending)
    assert [len(line.message) for line in lines[:2]] == [MAX_LINE_CHARS, 5]
    assert lines[2].message == "nul\ufffd and ? lone surrogate"
    assert lines[3].message == "no newline yet"
    seqs = [ShippedLine.model_validate(line.model_dump()).seq for line in lines]
    assert seqs == [3 * SEQ_PER_ATTEMPT + n for n in range(4)]


def test_output_without_newlines_does_not_pile_up() -> None:
    log = AttemptLog("p", 1, max_bytes=1024 * 1024)
    for _ in range(3):
        log.write(LogStream.STDERR, "\r" + "#" * (MAX_LINE_CHARS // 2))  # a progress bar
    # Kept as lines (a full one and the rest) once longer than a line may be.
    assert [len(line.message) for line in log.pending] == [MAX_LINE_CHARS, 2]
    log.close()
    assert sum(len(line.message) for line in log.pending) == 3 * (MAX_LINE_CHARS // 2 + 1)


def test_outside_an_attempt_writes_reach_the_real_stream() -> None:
    real = io.StringIO()
    router = StreamRouter(real, LogStream.STDOUT)
    router.write("plain\n")
    log = AttemptLog("o", 1, max_bytes=100)
    token = log_capture.current.set(log)
    try:
        router.write("captured\n")
    finally:
        log_capture.current.reset(token)
    assert real.getvalue() == "plain\n"
    assert [line.message for line in log.pending] == ["captured"]
    assert router.getvalue() == "plain\n"  # anything else is the real stream's


def test_the_logbook_ships_ended_attempts_at_once_and_running_ones_each_second() -> None:
    now = [100.0]
    book = LogBook(1000, clock=lambda: now[0])
    quiet = book.open("quiet", 1)
    book.close(quiet)
    assert book.logs == {}  # an attempt that wrote nothing is forgotten when it ends
    running = book.open("running", 1)
    assert not book.due()
    running.write(LogStream.STDOUT, "one\n")
    assert not book.due()  # shipped just now (the book was made at 100)
    now[0] += log_capture.FLUSH_SECONDS
    assert book.due()
    taken = book.take()
    assert [line.message for line in taken] == ["one"]
    running.write(LogStream.STDOUT, "two\n")
    assert not book.due()
    book.put_back(taken)  # the exchange failed: they go again, first
    book.close(running)
    assert book.due()  # ended: at once
    assert [line.message for line in book.take()] == ["one", "two"]
    assert book.logs == {}


def test_a_zero_bound_captures_nothing() -> None:
    engine = TaskExecutor(pool_size=1, logbook=LogBook(0))
    try:
        assert engine.logbook is None
    finally:
        engine.shutdown()
