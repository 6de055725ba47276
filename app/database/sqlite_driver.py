"""aiosqlite connections whose statements cost one trip to the connection's thread, and whose
writers queue for SQLite's write lock instead of polling for it.

One trip: SQLAlchemy's aiosqlite adapter makes four trips per statement (open a cursor, execute,
fetch the rows, close the cursor), each a queue hand-off to aiosqlite's thread and a wake-up of
the event loop: about 90 us of CPU apiece, more than most of our statements cost SQLite itself.
Here the cursor runs the statement, fetches its rows and closes in the thread at once, and
answers the rest from what it brought back; a transaction's BEGIN rides with its first statement.

Queueing: when workers run their transitions themselves (`--database-url`), several processes
write to one file. A writer that finds SQLite's lock taken sleeps in SQLite's busy handler (1, 2,
5, 10, 15, 20, 25... ms between tries) however soon the lock is free again: measured, the API
waited 6.5 ms on average for a lock held about 1 ms. So every write transaction first takes an
exclusive `flock` on `<database>-writer.lock`, in the connection's thread; the kernel hands it to
the next waiter the moment the holder commits. SQLite's own locking still guards the data (other
programs do not know of the file); this only orders our writers. A process that dies loses its
flock with its descriptors.

Everything else (the thread, closing) is aiosqlite's own. Used through
`create_async_engine(..., async_creator=...)` (app/database/connection.py)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import aiosqlite

Description = tuple[tuple[Any, ...], ...] | None
Outcome = tuple[Description, int, int | None, list[Any]]
T = TypeVar("T")
WRITE_BEGIN = "BEGIN IMMEDIATE"  # how app.database.connection begins every write transaction
BEGINS = frozenset({WRITE_BEGIN, "BEGIN"})


class WriterQueue:
    """The exclusive flock held from a write transaction's BEGIN to its COMMIT or ROLLBACK."""

    def __init__(self, database: str) -> None:
        self.fd = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.held = False

    def take(self) -> None:
        if not self.held:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.give_back()
        os.close(self.fd)


def _run(
    conn: sqlite3.Connection,
    writers: WriterQueue | None,
    begin: str | None,
    many: bool,
    sql: str,
    parameters: Any,
) -> Outcome:
    """In the connection's thread: the transaction's BEGIN if it is still due, then the whole
    life of one cursor."""
    if writers is not None and begin == WRITE_BEGIN:
        writers.take()
    cursor = conn.cursor()
    try:
        if begin is not None:
            cursor.execute(begin)
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()
        if writers is not None and not conn.in_transaction:  # a failed BEGIN, or autocommit
            writers.give_back()


def _end(writers: WriterQueue | None, end: Callable[[], None]) -> None:
    """In the connection's thread: COMMIT or ROLLBACK, and the write lock goes to the next."""
    try:
        end()
    finally:
        if writers is not None:
            writers.give_back()


class OneTripCursor:
    """What SQLAlchemy's adapter asks of an aiosqlite cursor, with the rows already here."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection) -> None:
        self._connection = connection
        self.description: Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: deque[Any] = deque()

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = None) -> OneTripCursor:
        return await self._run(False, sql, () if parameters is None else parameters)

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> OneTripCursor:
        return await self._run(True, sql, parameters)

    async def _run(self, many: bool, sql: str, parameters: Any) -> OneTripCursor:
        outcome = await self._connection.run_statement(many, sql, parameters)
        self.description, self.rowcount, self.lastrowid, rows = outcome
        self._rows = deque(rows)
        return self

    async def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = min(size or self.arraysize, len(self._rows))
        return [self._rows.popleft() for _ in range(count)]

    async def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    async def close(self) -> None:
        self._rows.clear()


class OneTripConnection(aiosqlite.Connection):
    writers: WriterQueue | None = None
    # A BEGIN is not sent alone: it rides with the transaction's first statement. That saves a
    # trip, and the write lock is taken only when there is work to do under it.
    begin_due: str | None = None

    def cursor(self) -> OneTripCursor:  # type: ignore[override]
        """No trip: the sqlite3 cursor is made in the thread when a statement runs."""
        return OneTripCursor(self)

    async def run_statement(self, many: bool, sql: str, parameters: Any) -> Outcome:
        if sql in BEGINS and self.begin_due is None and not many:
            self.begin_due = sql
            return None, -1, None, []
        begin, self.begin_due = self.begin_due, None
        return await self._in_thread(
            lambda: _run(self._conn, self.writers, begin, many, sql, parameters)
        )

    async def commit(self) -> None:
        await self._end(self._conn.commit)

    async def rollback(self) -> None:
        await self._end(self._conn.rollback)

    async def _end(self, end: Callable[[], None]) -> None:
        if self.begin_due is not None:  # nothing ran in the transaction: nothing to end
            self.begin_due = None
            return
        await self._in_thread(lambda: _end(self.writers, end))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        result: T = await self._execute(fn)  # type: ignore[no-untyped-call]
        return result

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self.writers is not None:
                self.writers.close()
                self.writers = None


async def connect(database: str, **kwargs: Any) -> OneTripConnection:
    """`sqlite3.connect(database, **kwargs)` on a thread of its own, like `aiosqlite.connect`."""
    connection = OneTripConnection(lambda: sqlite3.connect(database, **kwargs), iter_chunk_size=64)
    # As SQLAlchemy does for aiosqlite's own connections: a forgotten one must not keep the
    # interpreter from exiting.
    connection._thread.daemon = True
    if database != ":memory:" and not kwargs.get("uri"):
        connection.writers = WriterQueue(database)
    try:
        await connection
    except BaseException:
        if connection.writers is not None:
            connection.writers.close()
        raise
    return connection
