"""The task executor: handler modes, timeouts that really stop work, and result checking."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.models.task import AttemptOutcome, TaskToRun
from app.services.message_queue import Claim
from worker import builtin_tasks, worker_node
from worker.task_executor import REGISTRY, TaskExecutor, task
from worker.worker_node import WorkerNode, WorkerOptions

assert builtin_tasks  # registers the built-in types


def job(
    task_type: str, payload: dict[str, Any] | None = None, *, timeout: int = 30, **extra: Any
) -> TaskToRun:
    return TaskToRun(
        task_id="t",
        task_type=task_type,
        payload=payload or {},
        attempt=1,
        timeout=timeout,
        correlation_id="c",
        **extra,
    )


@pytest.fixture
def executor() -> Iterator[TaskExecutor]:
    engine = TaskExecutor(pool_size=2)
    yield engine
    engine.shutdown()


async def test_echo_returns_the_payload(executor: TaskExecutor) -> None:
    report = await executor.execute(job("echo", {"a": [1, 2]}))
    assert (report.outcome, report.result, report.attempt) == (
        AttemptOutcome.COMPLETED,
        {"a": [1, 2]},
        1,
    )


async def test_fail_uses_the_given_message(executor: TaskExecutor) -> None:
    report = await executor.execute(job("fail", {"parameters": {"message": "it broke"}}))
    assert (report.outcome, report.error) == (AttemptOutcome.ERROR, "it broke")


async def test_processing_and_analysis_do_real_work(executor: TaskExecutor) -> None:
    text = await executor.execute(job("processing", {"data": "  Hello   WORLD hello "}))
    assert text.result == {"normalized": "hello world hello", "word_count": 3, "unique_words": 2}
    stats = await executor.execute(
        job("analysis", {"data": [1, 2, 3, 4]}, dependency_results={"a": 1})
    )
    assert stats.result is not None
    assert (stats.result["mean"], stats.result["median"], stats.result["inputs_from"]) == (
        2.5,
        2.5,
        ["a"],
    )


async def test_cpu_runs_in_another_process(executor: TaskExecutor) -> None:
    report = await executor.execute(job("cpu", {"parameters": {"iterations": 1000}}))
    assert report.outcome == AttemptOutcome.COMPLETED
    assert report.result is not None and len(report.result["digest"]) == 64


async def test_unknown_task_type_is_an_error(executor: TaskExecutor) -> None:
    report = await executor.execute(job("nope"))
    assert report.outcome == AttemptOutcome.ERROR
    assert "no handler" in (report.error or "")


async def test_an_async_handler_is_cancelled_at_its_timeout(executor: TaskExecutor) -> None:
    started = time.monotonic()
    report = await executor.execute(job("sleep", {"parameters": {"seconds": 30}}, timeout=1))
    assert report.outcome == AttemptOutcome.TIMEOUT
    assert time.monotonic() - started < 10


async def test_a_process_handler_is_killed_at_its_timeout(executor: TaskExecutor) -> None:
    report = await executor.execute(job("cpu", {"parameters": {"iterations": 10**10}}, timeout=1))
    assert report.outcome == AttemptOutcome.TIMEOUT
    # The pool was torn down: the next process task gets a fresh one and completes.
    again = await executor.execute(job("cpu", {"parameters": {"iterations": 10}}))
    assert again.outcome == AttemptOutcome.COMPLETED


async def test_a_non_json_result_is_a_task_error(executor: TaskExecutor) -> None:
    @task("returns_object")
    async def returns_object(payload: dict[str, Any]) -> object:
        return object()

    try:
        report = await executor.execute(job("returns_object"))
    finally:
        del REGISTRY["returns_object"]
    assert report.outcome == AttemptOutcome.ERROR
    assert "not JSON serialisable" in (report.error or "")


async def test_a_raising_sync_handler_reports_the_exception(executor: TaskExecutor) -> None:
    @task("raises")
    def raises(payload: dict[str, Any]) -> None:
        raise ValueError("bad input")

    try:
        report = await executor.execute(job("raises"))
    finally:
        del REGISTRY["raises"]
    assert (report.outcome, report.error) == (AttemptOutcome.ERROR, "ValueError: bad input")


async def test_sync_handlers_run_off_the_event_loop(executor: TaskExecutor) -> None:
    @task("blocking")
    def blocking(payload: dict[str, Any]) -> int:
        time.sleep(0.3)
        return 1

    try:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        await executor.execute(job("blocking"))
        ticking.cancel()
    finally:
        del REGISTRY["blocking"]
    assert ticks > 5  # the loop kept running while the handler slept in its thread


def test_user_modules_register_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    (tmp_path / "my_tasks_mod.py").write_text(
        "from worker.task_executor import task\n\n@task('double')\ndef double(payload):\n"
        "    return payload['n'] * 2\n"
    )
    monkeypatch.syspath_prepend(os.fspath(tmp_path))
    importlib.import_module("my_tasks_mod")
    try:
        assert REGISTRY["double"].mode == "thread"
    finally:
        del REGISTRY["double"]


async def test_leases_lapse_for_an_overrun_attempt_a_blocked_loop_and_a_cut_off_worker() -> None:
    """A handler past its deadline, an event loop that stopped running, or a worker that has not
    heard from the scheduler for a lease period must not keep its leases alive from the lease
    keeper's thread: the sweeper then gives the work to another."""
    node = WorkerNode(WorkerOptions(worker_id="w", api_url="http://127.0.0.1:9"))
    try:
        job = TaskToRun(
            task_id="t", task_type="echo", payload={}, attempt=2, timeout=10, correlation_id=None
        )
        node.running["t"] = (job, asyncio.create_task(asyncio.sleep(0)))
        node.deadlines["t"] = time.monotonic() + 5
        assert node.held_leases() == [("t", "w#2")]
        node.deadlines["t"] = time.monotonic() - 1  # overran its timeout and grace
        assert node.held_leases() == []
        node.deadlines["t"] = time.monotonic() + 5
        node.loop_beat = time.monotonic() - 2 * node.lease_seconds  # the loop stopped beating
        assert node.held_leases() == []
        node.loop_beat = time.monotonic()
        assert node.held_leases() == [("t", "w#2")]
        node.last_contact = time.monotonic() - 2 * node.lease_seconds  # cut off from the API
        assert node.held_leases() == []
    finally:
        node.executor.shutdown()
        await node.api.close()


async def test_an_idle_worker_is_not_cut_off_between_heartbeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle, a worker hears from the scheduler only at its heartbeats (30 s by default), longer
    apart than a lease: with nothing to hold, that silence is no partition to report."""
    errors: list[str] = []
    monkeypatch.setattr(worker_node.log, "error", lambda event, **_: errors.append(event))
    node = WorkerNode(WorkerOptions(worker_id="w", api_url="http://127.0.0.1:9"))
    try:
        node.last_contact = time.monotonic() - 2 * node.lease_seconds
        assert node.held_leases() == []
        assert errors == []
        node.claimed["t"] = Claim("t", "dts:queue:echo", "0")  # holds a claim, heard from no one
        assert node.held_leases() == []
        assert errors == ["worker.cut_off"]
    finally:
        node.executor.shutdown()
        await node.api.close()
