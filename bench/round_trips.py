#!/usr/bin/env python3
"""What a transaction's round trips cost against one statement, on PostgreSQL with fsync on.

    python bench/round_trips.py [--rounds 2000]

Starts a private PostgreSQL server (fsync on) and, on one asyncpg connection, times three
shapes of the same work, twice each, alternating: two guarded updates in a transaction (BEGIN,
two statements, COMMIT: the worker's exchange before app/database/pg_exchange.py), the same two
updates as the data-modifying CTEs of one statement in autocommit (after), and `SELECT 1` (one
round trip). Prints the wall time and this process's CPU per call."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable

import asyncpg

from app.utils.embedded_servers import PostgresServer

TWO = "UPDATE t SET v = v + 1 WHERE id = ANY($1::int[]) RETURNING id"
ONE = """WITH a AS (UPDATE t SET v = v + 1 WHERE id = ANY($1::int[]) RETURNING id),
    b AS (UPDATE t SET v = v + 1 WHERE id = ANY($2::int[]) RETURNING id)
SELECT id FROM a UNION ALL SELECT id FROM b"""


async def measure(url: str, rounds: int) -> None:
    conn = await asyncpg.connect(url)  # type: ignore[no-untyped-call]
    await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    await conn.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) AS g")

    async def transaction() -> None:
        async with conn.transaction():
            await conn.fetch(TWO, [1, 2, 3])
            await conn.fetch(TWO, [4, 5, 6])

    async def one_statement() -> None:
        await conn.fetch(ONE, [1, 2, 3], [4, 5, 6])

    async def select_1() -> None:
        await conn.fetch("SELECT 1")

    shapes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("BEGIN, 2 updates, COMMIT", transaction),
        ("one statement, autocommit", one_statement),
        ("SELECT 1", select_1),
    ]
    for name, call in shapes * 2:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await call()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name:28} {wall / rounds * 1e6:6.0f} µs wall {cpu / rounds * 1e6:6.0f} µs CPU")
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    rounds = parser.parse_args().rounds
    data_dir = tempfile.mkdtemp(prefix="dts-round-trips-")
    server = PostgresServer(data_dir, fsync=True)
    server.start(timeout=60)
    try:
        asyncio.run(measure(server.url, rounds))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
