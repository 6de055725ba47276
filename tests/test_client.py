"""The Python client (dts_client) against the real app in-process, on SQLite and PostgreSQL:
AsyncClient over the `api` fixture's transport. The blocking Client runs the same operations
(dts_client/operations.py); tests/test_client_sync.py drives it against an API process."""

from __future__ import annotations

import inspect

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from app.config import Settings
from app.models.task import TaskStatus
from dts_client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    TaskFailed,
    Unauthorized,
    WaitTimeout,
)
from dts_client.retry import NO_RETRY, RetryPolicy
from tests.conftest import running

FAST = RetryPolicy(attempts=3, budget=5.0, base=0.01, cap=0.05)
ADMIN = "bootstrap-admin-key-for-client-tests-0123456789"


@pytest.fixture
async def client(api: httpx.AsyncClient) -> AsyncClient:
    return AsyncClient(http=api, retry=FAST)


def test_both_clients_have_the_same_methods_and_parameters() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    sync, asynchronous = public(Client), public(AsyncClient)
    assert sync.keys() == asynchronous.keys()
    for name, signature in sync.items():
        assert list(signature.parameters) == list(asynchronous[name].parameters), name
    iterators = {"list", "follow_logs", "producer"}
    coroutines = {n for n in asynchronous if inspect.iscoroutinefunction(getattr(AsyncClient, n))}
    assert coroutines == set(asynchronous) - iterators


async def test_submit_makes_up_an_id_so_a_resend_is_the_same_task(client: AsyncClient) -> None:
    task = await client.submit("echo", {"n": 1}, priority=7)
    assert (len(task.task_id), task.status, task.priority) == (32, TaskStatus.PENDING, 7)
    again = await client.submit("echo", {"n": 1}, task_id=task.task_id, priority=7)
    assert (again.task_id, again.created_at) == (task.task_id, task.created_at)
    with pytest.raises(Conflict) as conflict:
        await client.submit("echo", {"n": 2}, task_id=task.task_id, priority=7)
    assert conflict.value.status == 409
    assert (await client.get(task.task_id)).payload == {"n": 1}


async def test_a_batch_with_dependencies_and_its_graph(client: AsyncClient) -> None:
    tasks = await client.submit_many(
        [
            {"task_id": "join", "task_type": "echo", "dependencies": ["left", "right"]},
            {"task_id": "left", "task_type": "echo"},
            {"task_id": "right", "task_type": "echo", "payload": {"side": "r"}},
        ]
    )
    assert [t.task_id for t in tasks] == ["join", "left", "right"]
    graph = await client.graph("join")
    assert {n.task_id for n in graph.nodes} == {"join", "left", "right"}
    assert {(e.from_, e.to) for e in graph.edges} == {("left", "join"), ("right", "join")}
    assert (await client.get("join")).dependencies == ["left", "right"]


async def test_invalid_input_names_the_field(client: AsyncClient) -> None:
    with pytest.raises(Invalid) as local:
        await client.submit("echo", priority=11)  # refused before sending
    assert local.value.field == ("body", "priority")
    with pytest.raises(Invalid) as batch:
        await client.submit_many([{"task_type": "echo"}, {"task_type": "echo", "timeout": 0}])
    assert batch.value.field == ("body", "tasks", 1, "timeout")
    with pytest.raises(Invalid) as remote:  # only the API knows which tasks exist
        await client.submit("echo", dependencies=["no-such-task"])
    assert (remote.value.status, remote.value.field) == (422, ("body", "dependencies", 0))
    with pytest.raises(NotFound) as missing:
        await client.get("no-such-task")
    assert missing.value.errors[0].loc == ["path", "task_id"]


async def test_list_walks_every_page_with_filters(client: AsyncClient) -> None:
    made = await client.submit_many([{"task_type": "paged", "payload": {"i": i}} for i in range(7)])
    await client.submit("other")
    listed = [t.task_id async for t in client.list(task_type="paged", page_size=3)]
    assert sorted(listed) == sorted(t.task_id for t in made)
    assert len([t async for t in client.list(task_type="paged", limit=5, page_size=2)]) == 5
    await client.cancel(made[0].task_id)
    cancelled = [t async for t in client.list(status="cancelled", task_type="paged")]
    assert [t.task_id for t in cancelled] == [made[0].task_id]


async def test_wait_cancel_retry_and_failures(client: AsyncClient) -> None:
    task = await client.submit("echo", {"x": 1})
    with pytest.raises(WaitTimeout) as late:
        await client.wait(task.task_id, timeout=0.2, poll=0.05)
    assert late.value.pending == [task.task_id]
    assert (await client.cancel(task.task_id)).status == TaskStatus.CANCELLED
    with pytest.raises(Conflict):
        await client.cancel(task.task_id)  # already final
    assert (await client.wait(task.task_id)).status == TaskStatus.CANCELLED
    with pytest.raises(TaskFailed) as failed:
        await client.wait([task.task_id], raise_on_failure=True)
    assert failed.value.task.status == TaskStatus.CANCELLED
    with pytest.raises(TaskFailed):
        await client.result(task.task_id)
    again = await client.retry(task.task_id)
    assert again.status == TaskStatus.PENDING
    with pytest.raises(Conflict):
        await client.retry(task.task_id)  # pending: nothing to retry


async def test_wait_for_many_reports_progress(client: AsyncClient) -> None:
    tasks = await client.submit_many([{"task_type": "echo"} for _ in range(3)])
    for task in tasks:
        await client.cancel(task.task_id)
    seen: list[tuple[int, int]] = []
    ids = [t.task_id for t in tasks]
    done = await client.wait(ids, progress=lambda d, n: seen.append((d, n)))
    assert [t.task_id for t in done] == ids
    assert seen[-1] == (3, 3)


async def test_workers_queues_and_logs(client: AsyncClient, api: httpx.AsyncClient) -> None:
    spec = {"worker_id": "client-w1", "capabilities": ["echo"], "max_concurrent_tasks": 2}
    assert (await api.post("/api/workers/register", json=spec)).status_code == 201
    assert [w.worker_id for w in await client.workers()] == ["client-w1"]
    task = await client.submit("echo")
    queues = {q.task_type: q for q in await client.queues()}
    assert (queues["echo"].ready, queues["echo"].live_workers) == (1, 1)
    logs = await client.logs(task.task_id)
    assert (logs.task_id, logs.lines) == (task.task_id, [])
    overview = await client.overview()
    assert overview["tasks_by_status"]["pending"] == 1


async def test_keys_need_an_admin_key(client: AsyncClient) -> None:
    with pytest.raises(Unauthorized) as refused:
        await client.keys()
    assert refused.value.status == 401


async def test_keys_created_listed_used_and_revoked(
    settings: Settings, redis_client: Redis
) -> None:
    secured = settings.model_copy(
        update={
            "auth_required": True,
            "admin_api_key": SecretStr(ADMIN),
            "api_key_cache_seconds": 0.0,
        }
    )
    async with running(secured) as http:
        admin = AsyncClient(api_key=ADMIN, http=http, retry=FAST)
        created = await admin.create_key("reader", ["read"])
        assert [k.key_id for k in await admin.keys()] == [created.key_id]
        reader = AsyncClient(api_key=created.key, http=http, retry=FAST)
        with pytest.raises(NotFound):
            await reader.get("nothing")  # allowed to read; there is nothing
        with pytest.raises(Forbidden):
            await reader.submit("echo")
        await admin.revoke_key(created.key_id)
        with pytest.raises(Unauthorized):
            await reader.get("nothing")
        with pytest.raises(Unauthorized):
            await AsyncClient(http=http, retry=FAST).get("nothing")


async def test_rate_limited_calls_wait_for_retry_after(
    settings: Settings, redis_client: Redis
) -> None:
    limited = settings.model_copy(update={"rate_limit_read": 1.0, "rate_limit_burst": 1.0})
    async with running(limited) as http:
        impatient = AsyncClient(http=http, retry=NO_RETRY)
        await impatient.workers()
        with pytest.raises(RateLimited) as refused:
            await impatient.workers()
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        patient = AsyncClient(http=http, retry=RetryPolicy(attempts=3, budget=5.0))
        assert await patient.workers() == []  # after sleeping Retry-After


async def test_schedules(client: AsyncClient) -> None:
    made = await client.create_schedule("every-minute", "echo", {"n": 1}, interval_seconds=60)
    assert (made.enabled, made.task.payload, made.next_fire_at is not None) == (
        True,
        {"n": 1},
        True,
    )
    assert [s.schedule_id for s in await client.schedules()] == ["every-minute"]
    paused = await client.update_schedule("every-minute", enabled=False)
    assert paused.enabled is False
    task = await client.trigger_schedule("every-minute")
    assert task.task_id.startswith("every-minute:") and task.payload == {"n": 1}
    fires = (await client.get_schedule("every-minute")).last_fires
    assert [f.task_id for f in fires] == [task.task_id]
    with pytest.raises(Invalid) as bad:
        await client.create_schedule("bad", "echo", cron="61 * * * *")
    assert bad.value.field == ("body", "cron")
    await client.delete_schedule("every-minute")
    with pytest.raises(NotFound):
        await client.get_schedule("every-minute")


async def test_async_producer_batches_and_resolves_every_future(client: AsyncClient) -> None:
    async with client.producer(max_batch=10, linger_ms=1) as producer:
        futures = [await producer.submit("produced", {"i": i}) for i in range(25)]
        with pytest.raises(Invalid):
            await producer.submit("produced", priority=0)
    tasks = [f.result() for f in futures]
    assert [t.payload["i"] for t in tasks] == list(range(25))
    listed = {t.task_id async for t in client.list(task_type="produced")}
    assert listed == {t.task_id for t in tasks}
