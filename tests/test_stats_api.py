"""The dashboard's aggregate endpoints (/api/stats/*) on SQLite and PostgreSQL.

Time-dependent cases write the timestamps straight into the tasks table, so every bucket and
percentile is known exactly; one case drives real tasks through the worker protocol instead."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import insert

from app.api.stats import (
    decode_cursor,
    encode_cursor,
    histogram_percentile,
    percentile,
    summarize_workers,
)
from app.config import Settings
from app.database.connection import Database
from app.database.stats import LATENCY_EDGES
from app.database.tables import tasks
from app.models.worker import WorkerPublic
from app.services.message_queue import RedisQueue
from app.utils.embedded_servers import free_port


def _db(api: httpx.AsyncClient) -> Database:
    return api.app.state.db  # type: ignore[attr-defined,no-any-return]


async def insert_task(api: httpx.AsyncClient, task_id: str, **fields: Any) -> None:
    """A task row with the given fields; timestamps default to a finished run a minute ago."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "task_id": task_id,
        "task_type": "echo",
        "status": "completed",
        "priority": 1,
        "payload": {},
        "attempt": 1,
        "max_retries": 0,
        "timeout": 60,
        "fingerprint": task_id,
        "remaining_dependencies": 0,
        "has_dependents": False,
        "created_at": now - timedelta(seconds=70),
        "updated_at": now,
        "started_at": now - timedelta(seconds=65),
        "completed_at": now - timedelta(seconds=60),
    } | fields
    async with _db(api).transaction() as conn:
        await conn.execute(insert(tasks).values(**row))


async def register(api: httpx.AsyncClient, worker_id: str, capabilities: list[str]) -> None:
    spec = {"worker_id": worker_id, "capabilities": capabilities, "max_concurrent_tasks": 4}
    assert (await api.post("/api/workers/register", json=spec)).status_code == 201


# --- pure helpers -------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 95) == pytest.approx(95.0)


def test_histogram_percentile_interpolates_within_the_bin() -> None:
    bins = [0] * (len(LATENCY_EDGES) + 1)
    assert histogram_percentile(bins, 50) is None
    one_second = LATENCY_EDGES.index(1.0) + 1  # the bin [1, 2.5)
    bins[one_second] = 4
    assert histogram_percentile(bins, 50) == pytest.approx(1.75)  # halfway through the bin
    assert histogram_percentile(bins, 100) == pytest.approx(2.5)
    bins[0] = 4  # four more under 1 ms: the median moves to the top of the first bin
    assert histogram_percentile(bins, 50) == pytest.approx(0.001)
    bins[-1] = 100  # the open last bin answers with its lower edge
    assert histogram_percentile(bins, 99) == LATENCY_EDGES[-1]


def test_cursor_round_trips_and_rejects_garbage() -> None:
    stamp = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    cursor = decode_cursor(encode_cursor(stamp, "task-1"))
    assert (cursor.created_at, cursor.task_id) == (stamp, "task-1")
    for bad in ("", "!!!", encode_cursor(stamp, "x")[:-3], "bm90IGEgY3Vyc29y"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


# --- overview -----------------------------------------------------------------------------------


async def test_overview_of_an_empty_system(api: httpx.AsyncClient) -> None:
    body = (await api.get("/api/stats/overview")).json()
    assert body["tasks_by_status"] == {
        "pending": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert body["tasks_by_type"] == []
    assert body["queue"] == {
        "available": True,
        "error": None,
        "ready_by_type": {},
        "delayed": 0,
        "leased": 0,
    }
    assert body["workers"]["total"] == 0
    assert body["workers"]["offline_after"] == 3.0  # three heartbeat intervals of the fixture


async def test_overview_counts_tasks_queues_and_workers(api: httpx.AsyncClient) -> None:
    for i, priority in enumerate([1, 5, 5]):
        body = {"task_id": f"p{i}", "task_type": "processing", "priority": priority}
        assert (await api.post("/api/tasks", json=body)).status_code == 201
    await api.post(
        "/api/tasks", json={"task_id": "later", "task_type": "echo", "delay_seconds": 600}
    )
    await insert_task(api, "done", task_type="echo")
    await insert_task(api, "broken", task_type="fail", status="failed")
    await register(api, "w1", ["echo", "processing"])
    beat = {"status": "busy", "current_tasks": ["p0", "p1"]}
    assert (await api.post("/api/workers/w1/heartbeat", json=beat)).status_code == 200

    body = (await api.get("/api/stats/overview")).json()
    assert body["tasks_by_status"] == {
        "pending": 4,
        "running": 0,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }
    by_type = {c["task_type"]: c for c in body["tasks_by_type"]}
    assert (by_type["processing"]["pending"], by_type["echo"]["completed"]) == (3, 1)
    assert by_type["fail"]["failed"] == 1
    assert body["pending_by_priority"] == [
        {"priority": 5, "pending": 2},
        {"priority": 1, "pending": 2},
    ]
    assert body["queue"]["ready_by_type"] == {"processing": 3}
    assert body["queue"]["delayed"] == 1
    workers_ = body["workers"]
    assert (workers_["live"], workers_["offline"], workers_["silent"]) == (1, 0, 0)
    assert (workers_["slots_used"], workers_["slots_total"]) == (2, 4)
    assert workers_["live_capabilities"] == ["echo", "processing"]


def test_workers_silent_longer_than_offline_after_count_as_lost() -> None:
    """Pure: the maintenance loop marks such workers offline within a sweep, so through the API
    this state is visible only while the sweeper is not running (Redis down, say)."""
    now = datetime.now(UTC)

    def worker(worker_id: str, status: str, age: float, caps: list[str]) -> WorkerPublic:
        return WorkerPublic(
            worker_id=worker_id, status=status, capabilities=caps, max_concurrent_tasks=2,
            current_tasks=["x"], system_info={}, hostname=None, registered_at=now,
            last_heartbeat=now - timedelta(seconds=age),
        )  # fmt: skip

    found = [
        worker("fine", "active", 1, ["sleep"]),
        worker("quiet", "busy", 31, ["echo"]),
        worker("gone", "offline", 500, ["cpu"]),
    ]
    summary = summarize_workers(found, Settings(heartbeat_interval=10), now)
    assert (summary.live, summary.silent, summary.offline, summary.total) == (1, 1, 1, 3)
    assert summary.live_capabilities == ["sleep"]
    assert (summary.slots_used, summary.slots_total) == (2, 4)  # silent workers still hold slots
    assert summary.offline_after == 30


async def test_overview_counts_deregistered_workers_as_offline(api: httpx.AsyncClient) -> None:
    await register(api, "gone", ["cpu"])
    await register(api, "fine", ["sleep"])
    assert (await api.post("/api/workers/gone/deregister", json={})).status_code == 204
    summary = (await api.get("/api/stats/overview")).json()["workers"]
    assert (summary["live"], summary["silent"], summary["offline"]) == (1, 0, 1)
    assert summary["live_capabilities"] == ["sleep"]


async def test_overview_survives_redis_being_down(
    api: httpx.AsyncClient, redis_client: Redis
) -> None:
    app = api.app  # type: ignore[attr-defined]
    healthy = app.state.queue
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    app.state.queue = RedisQueue(unreachable)
    try:
        await insert_task(api, "t1")
        response = await api.get("/api/stats/overview")
    finally:
        app.state.queue = healthy
        await unreachable.aclose()
    assert response.status_code == 200
    body = response.json()
    assert body["queue"]["available"] is False
    assert body["queue"]["error"] == "ConnectionError"
    assert body["tasks_by_status"]["completed"] == 1


# --- time series --------------------------------------------------------------------------------


def _bucket_of(series: dict[str, Any], moment: datetime) -> dict[str, Any]:
    step = timedelta(seconds=series["bucket_seconds"])
    for bucket in series["buckets"]:
        start = datetime.fromisoformat(bucket["start"])
        if start <= moment < start + step:
            return bucket  # type: ignore[no-any-return]
    raise AssertionError(f"no bucket holds {moment}")


async def test_timeseries_buckets_counts_rates_and_latency(api: httpx.AsyncClient) -> None:
    # Mid-minute: a finish time on a bucket edge would be placed by float rounding (SQLite).
    end = (datetime.now(UTC) - timedelta(minutes=3)).replace(second=30, microsecond=0)
    # Three completed (queue wait, run time) and one failed; no duration sits on a bin edge,
    # where float rounding of the timestamps would decide the bin.
    for i, (wait, run) in enumerate([(1.2, 12), (2, 20), (3, 30)]):
        started = end - timedelta(seconds=run)
        await insert_task(
            api,
            f"ok{i}",
            created_at=started - timedelta(seconds=wait),
            started_at=started,
            completed_at=end,
        )
    await insert_task(
        api,
        "bad",
        status="failed",
        created_at=end - timedelta(seconds=2.7),
        started_at=end - timedelta(seconds=1.5),
        completed_at=end,
    )
    # Finished long before the window: not counted anywhere.
    old = end - timedelta(hours=3)
    await insert_task(api, "old", created_at=old, started_at=old, completed_at=old)

    series = (await api.get("/api/stats/timeseries?minutes=10&bucket_seconds=60")).json()
    assert len(series["buckets"]) == 10
    bucket = _bucket_of(series, end)
    assert (bucket["completed"], bucket["failed"]) == (3, 1)
    assert bucket["error_rate"] == pytest.approx(0.25)
    assert bucket["throughput"] == pytest.approx(3 / 60)
    # Estimates from the histogram bins: run times (1.5, 12, 20, 30) have their median (16) in
    # the bin [10, 25), which holds two of the four; waits (1.2, 1.2, 2, 3) their p95 (2.85) in
    # [2.5, 5), which holds one.
    assert bucket["run_time_p50"] == pytest.approx(17.5)
    assert bucket["queue_wait_p95"] == pytest.approx(4.5)
    others = [b for b in series["buckets"] if b is not bucket]
    assert all(b["completed"] == b["failed"] == 0 and b["error_rate"] is None for b in others)
    assert (series["totals"]["completed"], series["totals"]["submitted"]) == (3, 4)


async def test_timeseries_counts_submissions_by_creation_time(api: httpx.AsyncClient) -> None:
    created: list[datetime] = []
    for i in range(3):
        answer = await api.post("/api/tasks", json={"task_id": f"n{i}", "task_type": "echo"})
        assert answer.status_code == 201
        created.append(datetime.fromisoformat(answer.json()["created_at"]))
    series = (await api.get("/api/stats/timeseries?minutes=5&bucket_seconds=30")).json()
    # Each task in the bucket of its creation (the three may straddle a bucket's edge, and the
    # clock may pass one before this line: reading it here failed once at 11:51:30.001).
    expected = Counter(_bucket_of(series, moment)["start"] for moment in created)
    counted = {b["start"]: b["submitted"] for b in series["buckets"] if b["submitted"]}
    assert counted == dict(expected)
    assert series["totals"]["submitted"] == 3
    assert series["totals"]["completed"] == 0


async def test_timeseries_rejects_too_many_buckets(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/stats/timeseries?minutes=1440&bucket_seconds=1")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "bucket_seconds"]


async def test_stats_follow_tasks_run_through_the_worker_protocol(
    api: httpx.AsyncClient,
) -> None:
    """Submit, claim, start and report as a worker does; the stats see the real timestamps."""
    for i in range(2):
        await api.post("/api/tasks", json={"task_id": f"r{i}", "task_type": "echo"})
    await register(api, "w", ["echo"])
    claimed = await api.app.state.queue.claim("w", ["echo"], 2)  # type: ignore[attr-defined]
    assert (await api.post("/api/workers/w/start", json={"task_ids": claimed})).status_code == 200
    reports = [
        {"task_id": "r0", "attempt": 1, "outcome": "completed", "result": {"ok": True}},
        {"task_id": "r1", "attempt": 1, "outcome": "error", "error": "boom"},
    ]
    answer = await api.post("/api/workers/w/reports", json={"reports": reports})
    assert answer.json()["accepted"] == ["r0", "r1"]  # r1 retries later (max_retries=2)

    series = (await api.get("/api/stats/timeseries?minutes=5&bucket_seconds=60")).json()
    assert series["totals"]["completed"] == 1
    assert series["totals"]["run_time_p50"] >= 0
    durations = (await api.get("/api/stats/durations?minutes=5")).json()
    assert [s["task_type"] for s in durations["samples"]] == ["echo"]
    page = (await api.get("/api/stats/tasks?status=completed")).json()
    assert json.loads(page["tasks"][0]["result_preview"]) == {"ok": True}


# --- durations ----------------------------------------------------------------------------------


async def test_durations_sample_and_per_type_percentiles(api: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    for i, run in enumerate([1, 2, 3, 4]):
        started = now - timedelta(seconds=30)
        await insert_task(
            api,
            f"c{i}",
            task_type="cpu",
            created_at=started - timedelta(seconds=2),
            started_at=started,
            completed_at=started + timedelta(seconds=run),
        )
    await insert_task(api, "f", task_type="fail", status="failed")
    await insert_task(api, "never-ran", task_type="fail", status="failed", started_at=None)
    await insert_task(api, "waiting", status="pending", started_at=None, completed_at=None)

    body = (await api.get("/api/stats/durations?minutes=10")).json()
    assert len(body["samples"]) == 5
    by_type = {t["task_type"]: t for t in body["by_type"]}
    assert by_type["cpu"]["count"] == 4
    assert by_type["cpu"]["run_time_p50"] == pytest.approx(2.5)
    assert by_type["cpu"]["queue_wait_p95"] == pytest.approx(2.0)
    assert by_type["fail"]["count"] == 1
    limited = (await api.get("/api/stats/durations?minutes=10&limit=2")).json()
    assert len(limited["samples"]) == 2


# --- task pages ---------------------------------------------------------------------------------


async def test_task_pages_walk_every_task_once_newest_first(api: httpx.AsyncClient) -> None:
    base = datetime.now(UTC) - timedelta(minutes=5)
    # Two tasks share a created_at so the task_id tie-break is exercised.
    stamps = [
        base,
        base + timedelta(seconds=1),
        base + timedelta(seconds=1),
        base + timedelta(seconds=2),
    ]
    for i, stamp in enumerate(stamps):
        await insert_task(
            api, f"t{i}", created_at=stamp, status="pending", started_at=None, completed_at=None
        )
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        query = "/api/stats/tasks?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(query)).json()
        seen += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["t3", "t2", "t1", "t0"]


async def test_task_pages_filter_by_every_field(api: httpx.AsyncClient) -> None:
    await insert_task(api, "a", task_type="cpu", priority=9, worker_id="w1")
    await insert_task(
        api,
        "b",
        task_type="cpu",
        priority=2,
        worker_id="w2",
        status="failed",
        error="boom",
        result=None,
    )
    await insert_task(
        api, "c", task_type="echo", priority=9, status="pending", started_at=None, completed_at=None
    )

    async def ids(query: str) -> set[str]:
        response = await api.get(f"/api/stats/tasks?{query}")
        assert response.status_code == 200, response.text
        return {t["task_id"] for t in response.json()["tasks"]}

    assert await ids("priority=9") == {"a", "c"}
    assert await ids("task_type=cpu") == {"a", "b"}
    assert await ids("worker_id=w2") == {"b"}
    assert await ids("status=completed&status=failed") == {"a", "b"}
    assert await ids("status=pending&priority=2") == set()
    failed = (await api.get("/api/stats/tasks?status=failed")).json()["tasks"][0]
    assert failed["error"] == "boom"
    assert failed["run_time"] == pytest.approx(5.0)


async def test_task_pages_preview_results_and_reject_bad_input(api: httpx.AsyncClient) -> None:
    await insert_task(api, "big", result={"text": "x" * 5000})
    summary = (await api.get("/api/stats/tasks")).json()["tasks"][0]
    assert len(summary["result_preview"]) == 200
    assert summary["result_preview"].startswith('{"text"')
    assert "payload" not in summary
    for query, field in [
        ("cursor=garbage", "cursor"),
        ("priority=11", "priority"),
        ("status=lost", "status"),
        ("limit=0", "limit"),
    ]:
        response = await api.get(f"/api/stats/tasks?{query}")
        assert response.status_code == 422, query
        assert response.json()["detail"][0]["loc"][:2] == ["query", field]
