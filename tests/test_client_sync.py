"""The blocking Client and the threaded producer against a real API process and worker (the
in-process app's transport is async only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from app.models.logs import LogStream
from app.models.task import TaskPublic, TaskStatus
from app.utils.embedded_servers import ValkeyServer, free_port
from dts_client import Client, Invalid, TaskFailed, Unavailable
from dts_client.producer import ProducerClosed
from tests.integration.harness import Stack

pytestmark = pytest.mark.e2e
T = TypeVar("T")


@pytest.fixture(scope="module")
async def api_url(
    tmp_path_factory: pytest.TempPathFactory, isolated_valkey: ValkeyServer
) -> AsyncIterator[str]:
    """One API process and one worker for the module, on its own Valkey and SQLite file."""
    redis = Redis.from_url(isolated_valkey.url)
    await redis.flushall()
    await redis.aclose()
    tmp = tmp_path_factory.mktemp("client-sync")
    stack = Stack(
        tmp=tmp,
        database_url=f"sqlite:///{tmp / 'sync.db'}",
        redis_url=isolated_valkey.url,
        env={"LEASE_SECONDS": "2", "SWEEP_INTERVAL": "0.2", "HEARTBEAT_INTERVAL": "1"},
    )
    try:
        await stack.start_api()
        stack.start_worker("sync-1")
        await stack.wait_for_workers("sync-1")
        yield stack.api_url
    finally:
        stack.stop_all()


async def blocking(call: Callable[[], T]) -> T:
    """The blocking client off the test's event loop."""
    return await asyncio.to_thread(call)


async def test_submit_wait_and_result_with_a_real_worker(api_url: str) -> None:
    with Client(api_url) as client:
        task = await blocking(lambda: client.submit("echo", {"hello": "world"}))
        assert await blocking(lambda: client.result(task.task_id, timeout=30)) == {"hello": "world"}
        failing = await blocking(lambda: client.submit("fail", max_retries=0))
        with pytest.raises(TaskFailed, match="task failed as requested") as failed:
            await blocking(lambda: client.result(failing.task_id, timeout=30))
        assert failed.value.task.status == TaskStatus.FAILED
        done = await blocking(lambda: client.wait([task.task_id, failing.task_id], timeout=30))
        assert [t.status for t in done] == [TaskStatus.COMPLETED, TaskStatus.FAILED]


async def test_follow_logs_yields_each_line_once_in_order(api_url: str) -> None:
    payload = {"parameters": {"lines": 4, "interval": 0.2}}
    with Client(api_url) as client:
        task = await blocking(lambda: client.submit("log_lines", payload))
        lines = await blocking(lambda: list(client.follow_logs(task.task_id, poll=0.1)))
        assert (await blocking(lambda: client.get(task.task_id))).status == TaskStatus.COMPLETED
    stdout = [line.message for line in lines if line.stream == LogStream.STDOUT]
    assert stdout == [f"line {n}" for n in range(4)]
    assert [line.seq for line in lines] == sorted({line.seq for line in lines})
    assert {line.stream for line in lines} == set(LogStream)


def produce(client: Client, count: int) -> list[Future[TaskPublic]]:
    with client.producer(max_batch=200, linger_ms=5) as producer:
        futures: list[Future[TaskPublic]] = [
            producer.submit("produced", {"n": n}) for n in range(count)
        ]
        with pytest.raises(Invalid):
            producer.submit("produced", priority=0)
    with pytest.raises(ProducerClosed):
        producer.submit("produced")
    return futures


async def test_the_producer_sends_batches_and_resolves_every_future(api_url: str) -> None:
    with Client(api_url) as client:
        futures = await blocking(lambda: produce(client, 1500))
        tasks = [future.result(timeout=0) for future in futures]
        listed = await blocking(lambda: {t.task_id for t in client.list(task_type="produced")})
    assert [t.payload["n"] for t in tasks] == list(range(1500))
    assert listed == {t.task_id for t in tasks}


async def test_a_refused_batch_fails_only_its_own_futures(api_url: str) -> None:
    def submit_two_batches() -> list[Future[TaskPublic]]:
        # Full batches of two, sent as soon as full: the batching is deterministic.
        with Client(api_url) as client, client.producer(max_batch=2, linger_ms=60_000) as p:
            good = [p.submit("refusals", {"n": n}) for n in (1, 2)]
            bad = [p.submit("refusals", dependencies=["no-such-task"]), p.submit("refusals")]
            p.flush()
        return [*good, *bad]

    first, second, refused, innocent = await blocking(submit_two_batches)
    assert first.result().status == second.result().status == TaskStatus.PENDING
    for future in (refused, innocent):
        error = future.exception()
        assert isinstance(error, Invalid)
        assert error.field == ("body", "tasks", 0, "dependencies", 0)


async def test_flush_sends_a_partial_batch_without_waiting_for_the_linger(api_url: str) -> None:
    def flushed() -> tuple[TaskPublic, float]:
        with Client(api_url) as client, client.producer(max_batch=100, linger_ms=600_000) as p:
            future = p.submit("flushed")
            started = time.monotonic()
            p.flush()
            return future.result(timeout=0), time.monotonic() - started

    task, seconds = await blocking(flushed)
    assert task.status == TaskStatus.PENDING and seconds < 60  # the linger is 600 s


async def test_several_api_addresses_fail_over_to_one_that_answers(api_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(f"{dead},{api_url}") as client:
        assert client.endpoint.api_urls == (dead, api_url)
        task = await blocking(lambda: client.submit("echo", {"n": 1}))
        assert await blocking(lambda: client.result(task.task_id, timeout=30)) == {"n": 1}
    with Client(dead) as alone, pytest.raises(Unavailable):
        await blocking(lambda: alone.get(task.task_id))
