"""Group commit on SQLite (app.database.connection.GroupCommit): concurrent write transactions
share one commit, each keeps its own rollback, and none returns before it is durable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from app.database.connection import Database
from app.database.tables import workers

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'group.db'}")
    await database.migrate()
    yield database
    await database.dispose()


def row(worker_id: str) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "status": "active",
        "capabilities": [],
        "max_concurrent_tasks": 1,
        "current_tasks": [],
        "system_info": {},
        "hostname": None,
        "registered_at": NOW,
        "last_heartbeat": NOW,
    }


async def stored_ids(db: Database) -> list[str]:
    async with db.read() as conn:
        return sorted(r.worker_id for r in await conn.execute(select(workers.c.worker_id)))


async def write(db: Database, worker_id: str, *, fail: bool = False) -> None:
    async with db.transaction() as conn:
        await conn.execute(insert(workers), [row(worker_id)])
        await asyncio.sleep(0)  # let the others queue up behind this one
        if fail:
            raise RuntimeError("this member fails")


async def test_concurrent_writers_share_commits_and_keep_their_own_rollback(
    db: Database,
) -> None:
    commits = 0

    def count(_conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(db.engine.sync_engine, "commit", count)
    outcomes = await asyncio.gather(
        *(write(db, f"w{i}", fail=i % 10 == 3) for i in range(50)), return_exceptions=True
    )
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, RuntimeError)]
    assert failed == [3, 13, 23, 33, 43]
    assert await stored_ids(db) == sorted(f"w{i}" for i in range(50) if i not in failed)
    assert 1 <= commits < 25, commits  # 50 transactions, far fewer commits


async def test_a_member_returns_only_after_its_commit(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(insert(workers), [row("durable")])
    # A fresh connection (as another process would) sees it: it was committed, not just released.
    other = Database(db.url)
    try:
        assert await stored_ids(other) == ["durable"]
    finally:
        await other.dispose()


async def test_a_duplicate_key_fails_only_its_own_transaction(db: Database) -> None:
    await write(db, "taken")
    outcomes = await asyncio.gather(write(db, "taken"), write(db, "fresh"), return_exceptions=True)
    assert outcomes[1] is None and outcomes[0] is not None
    assert await stored_ids(db) == ["fresh", "taken"]


async def test_a_failing_first_member_undoes_only_its_own_work(db: Database) -> None:
    # The first member of a group runs without a savepoint; its failure rolls the transaction
    # back, and those queued behind it start a fresh one.
    outcomes = await asyncio.gather(
        write(db, "first", fail=True),
        write(db, "second"),
        write(db, "third"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] is None and outcomes[2] is None
    assert await stored_ids(db) == ["second", "third"]
    await write(db, "alone")
    with pytest.raises(RuntimeError):
        await write(db, "alone and failing", fail=True)
    assert await stored_ids(db) == ["alone", "second", "third"]
