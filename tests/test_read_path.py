"""The read path at scale, on SQLite and PostgreSQL: keyset paging of GET /api/tasks and
/api/stats/tasks under every filter, the bounded `total`, the time series' window, snapshots of
large aggregates, and reconciliation whose cost does not grow with the backlog.

Rows are written straight into the tasks table, so every order and count is known exactly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, update

from app.api import stats as stats_api
from app.database import repositories as repo
from app.database.connection import Database
from app.database.tables import tasks
from app.models.task import ReadyTask
from app.services import recovery as recovery_module
from tests.conftest import Services

NOW = datetime.now(UTC).replace(microsecond=0)
STATUSES = ("pending", "running", "completed", "failed", "cancelled")


def _db(api: httpx.AsyncClient) -> Database:
    return api.app.state.db  # type: ignore[attr-defined,no-any-return]


def task_row(task_id: str, **fields: Any) -> dict[str, Any]:
    created = fields.pop("created_at", NOW - timedelta(minutes=5))
    row: dict[str, Any] = {
        "task_id": task_id,
        "task_type": "echo",
        "status": "pending",
        "priority": 5,
        "payload": {"n": task_id},
        "attempt": 0,
        "max_retries": 0,
        "timeout": 60,
        "fingerprint": task_id,
        "remaining_dependencies": 0,
        "has_dependents": False,
        "created_at": created,
        "updated_at": created,
    }
    return row | fields


async def insert_rows(db: Database, rows: list[dict[str, Any]]) -> None:
    async with db.transaction() as conn:
        for start in range(0, len(rows), 500):
            await conn.execute(insert(tasks), rows[start : start + 500])


def mixed_rows(n: int) -> list[dict[str, Any]]:
    """n tasks over three types, two workers and every status; groups of three share a
    created_at (as a batch does), so paging must break ties by task_id."""
    ids: Iterator[int] = count()
    rows = []
    for i in range(n):
        status = STATUSES[i % len(STATUSES)]
        worker = None if status == "pending" else f"w{i % 2}"
        rows.append(
            task_row(
                f"t{next(ids):03d}",
                task_type=("echo", "cpu", "io")[i % 3],
                status=status,
                worker_id=worker,
                priority=1 + i % 10,
                created_at=NOW - timedelta(seconds=i // 3),
            )
        )
    return rows


def newest_first(rows: list[dict[str, Any]], **match: str | None) -> list[str]:
    kept = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    kept.sort(key=lambda r: (r["created_at"], r["task_id"]), reverse=True)
    return [r["task_id"] for r in kept]


async def walk(api: httpx.AsyncClient, path: str, params: dict[str, Any]) -> list[str]:
    """Every id of a listing, following next_cursor (bounded: at most 100 pages)."""
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        query = params | ({"cursor": cursor} if cursor else {})
        answer = await api.get(path, params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen += [t["task_id"] for t in body["tasks"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("more than 100 pages")


# --- GET /api/tasks -----------------------------------------------------------------------------

FILTERS: list[dict[str, str]] = [
    {},
    {"status": "completed"},
    {"task_type": "cpu"},
    {"worker_id": "w1"},
    {"task_type": "io", "status": "failed"},
    {"worker_id": "w0", "status": "running"},
    {"task_type": "echo", "worker_id": "w1"},
    {"task_type": "cpu", "worker_id": "w0", "status": "cancelled"},
    {"task_type": "none"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "all")
async def test_cursor_pages_cover_every_match_once_in_order(
    api: httpx.AsyncClient, filters: dict[str, str]
) -> None:
    rows = mixed_rows(60)
    await insert_rows(_db(api), rows)
    expected = newest_first(rows, **filters)
    assert await walk(api, "/api/tasks", filters | {"limit": 4}) == expected
    # Offset pages agree with cursor pages.
    offset_page = (await api.get("/api/tasks", params=filters | {"limit": 5, "offset": 3})).json()
    assert [t["task_id"] for t in offset_page["tasks"]] == expected[3:8]


async def test_a_cursor_resumes_after_its_row_even_among_equal_created_at(
    api: httpx.AsyncClient,
) -> None:
    rows = [task_row(f"same-{i}", created_at=NOW) for i in range(5)]
    await insert_rows(_db(api), rows)
    first = (await api.get("/api/tasks", params={"limit": 2})).json()
    assert [t["task_id"] for t in first["tasks"]] == ["same-4", "same-3"]
    rest = await api.get("/api/tasks", params={"limit": 10, "cursor": first["next_cursor"]})
    assert [t["task_id"] for t in rest.json()["tasks"]] == ["same-2", "same-1", "same-0"]
    assert rest.json()["next_cursor"] is None


async def test_total_is_exact_up_to_the_cap_then_a_flagged_lower_bound(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_rows(_db(api), mixed_rows(30))
    body = (await api.get("/api/tasks", params={"task_type": "cpu", "limit": 3})).json()
    assert (body["total"], body["total_exact"]) == (10, True)
    monkeypatch.setattr(repo, "COUNT_CAP", 4)
    body = (await api.get("/api/tasks", params={"limit": 3, "offset": 2})).json()
    assert (body["total"], body["total_exact"], body["limit"], body["offset"]) == (6, False, 3, 2)
    body = (await api.get("/api/tasks", params={"status": "running", "limit": 3})).json()
    assert (body["total"], body["total_exact"]) == (4, False)
    body = (await api.get("/api/tasks", params={"status": "running", "offset": 3})).json()
    assert (body["total"], body["total_exact"]) == (6, True)


async def test_type_and_worker_together_total_what_the_pages_show(api: httpx.AsyncClient) -> None:
    rows = mixed_rows(60)
    await insert_rows(_db(api), rows)
    matching = len(newest_first(rows, task_type="echo", worker_id="w1"))
    params: dict[str, str | int] = {"task_type": "echo", "worker_id": "w1", "limit": 3}
    first = (await api.get("/api/tasks", params=params)).json()
    assert (first["total"], first["total_exact"]) == (4, False)  # at least one more
    last = (await api.get("/api/tasks", params=params | {"offset": matching - 2})).json()
    assert (last["total"], last["total_exact"]) == (matching, True)


@pytest.mark.parametrize("cursor", ["???", "bm90IGEgY3Vyc29y", "eA"])
async def test_a_cursor_the_api_did_not_make_is_422(api: httpx.AsyncClient, cursor: str) -> None:
    answer = await api.get("/api/tasks", params={"cursor": cursor})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "cursor"]


# --- GET /api/stats/tasks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"status": ["failed", "cancelled"]},
        {"task_type": "io"},
        {"status": ["running", "completed"], "worker_id": "w1"},
        {"priority": 3},
        {"task_type": "cpu", "priority": 2},
    ],
    ids=["statuses", "type", "statuses-worker", "priority", "type-priority"],
)
async def test_stats_pages_merge_statuses_in_order(
    api: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    rows = mixed_rows(60)
    await insert_rows(_db(api), rows)

    def wanted(r: dict[str, Any]) -> bool:
        return (
            r["status"] in params.get("status", STATUSES)
            and r["task_type"] == params.get("task_type", r["task_type"])
            and r["worker_id"] == params.get("worker_id", r["worker_id"])
            and r["priority"] == params.get("priority", r["priority"])
        )

    expected = newest_first([r for r in rows if wanted(r)])
    assert expected
    assert await walk(api, "/api/stats/tasks", params | {"limit": 3}) == expected


# --- time series and snapshots --------------------------------------------------------------------


async def test_a_task_submitted_long_before_the_window_counts_where_it_finished(
    api: httpx.AsyncClient,
) -> None:
    now = datetime.now(UTC)
    old = task_row(
        "waited",
        status="completed",
        created_at=now - timedelta(hours=5),
        started_at=now - timedelta(minutes=3),
        completed_at=now - timedelta(minutes=2),
    )
    await insert_rows(_db(api), [old])
    body = (await api.get("/api/stats/timeseries", params={"minutes": 60})).json()
    assert body["totals"]["completed"] == 1
    assert body["totals"]["submitted"] == 0
    assert body["totals"]["queue_wait_p50"] > 3600


async def test_large_aggregates_are_served_from_a_snapshot_refreshed_behind(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_api, "SNAPSHOT_ROWS", 1)
    monkeypatch.setattr(stats_api, "REFRESH_SECONDS", 3600.0)
    await insert_rows(_db(api), [task_row("first")])
    before = (await api.get("/api/stats/overview")).json()
    await insert_rows(_db(api), [task_row("second")])
    served = (await api.get("/api/stats/overview")).json()
    assert served["tasks_by_status"]["pending"] == 1  # the snapshot
    assert served["counts_as_of"] == before["counts_as_of"]
    monkeypatch.setattr(stats_api, "REFRESH_SECONDS", 0.0)
    await api.get("/api/stats/overview")  # starts the refresh, answers from the snapshot
    snapshots = stats_api.snapshots_of(api.app)  # type: ignore[attr-defined]
    await snapshots.settled()
    fresh = (await api.get("/api/stats/overview")).json()
    assert fresh["tasks_by_status"]["pending"] == 2


# --- reconciliation -----------------------------------------------------------------------------


async def test_a_recently_changed_task_missing_from_redis_is_found_by_one_call(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a backlog many pages long, one reconcile call reads one sweep page plus the recent
    changes, and that is enough to requeue a task whose enqueue was lost a few seconds ago."""
    monkeypatch.setattr(recovery_module, "PAGE", 50)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    backlog = [task_row(f"old-{i:04d}", updated_at=long_ago) for i in range(2000)]
    await insert_rows(services.db, backlog)
    await services.queue.enqueue([ReadyTask(r["task_id"], "echo", 5) for r in backlog])
    recent = datetime.now(UTC) - timedelta(seconds=3)
    await insert_rows(services.db, [task_row("lost", created_at=recent)])
    recovery = services.recovery
    recovery._reconcile_cursor = ""  # the sweep starts at the oldest change, far from "lost"
    assert await recovery.reconcile_page() == 1
    assert (await services.queue.is_known([ReadyTask("lost", "echo", 5)])) == [True]
    sweep = repo.ReadyKey.parse(recovery._reconcile_cursor)
    assert sweep is not None and sweep.task_id == "old-0049"  # one page of the backlog read


async def test_the_sweep_finds_an_old_task_redis_lost_within_backlog_over_page_calls(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery_module, "PAGE", 50)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    backlog = [task_row(f"old-{i:04d}", updated_at=long_ago) for i in range(500)]
    await insert_rows(services.db, backlog)
    await services.queue.enqueue([ReadyTask(r["task_id"], "echo", 5) for r in backlog[:-1]])
    recovery = services.recovery
    recovery._reconcile_cursor = ""
    found = [await recovery.reconcile_page() for _ in range(500 // 50 + 1)]
    assert found == [0] * 9 + [1, 0]
    assert recovery._reconcile_cursor == ""  # the sweep wrapped around


async def test_a_task_changed_again_is_checked_again(services: Services) -> None:
    await insert_rows(services.db, [task_row("t1", updated_at=datetime.now(UTC))])
    await services.queue.enqueue([ReadyTask("t1", "echo", 5)])
    recovery = services.recovery
    async with services.db.transaction() as conn:
        await conn.execute(
            update(tasks).values(updated_at=datetime.now(UTC) - timedelta(seconds=3))
        )
    assert await recovery.reconcile_page() == 0
    await services.queue.redis.delete(services.queue.keys.queue("echo"))
    async with services.db.transaction() as conn:
        await conn.execute(
            update(tasks).values(updated_at=datetime.now(UTC) - timedelta(seconds=2.5))
        )
    assert await recovery.reconcile_page() == 1
