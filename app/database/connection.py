"""The async engine, per-backend connection set-up, transactions, and migrations on start-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from app.database import sqlite_driver

READ_ONLY = "dts_read_only"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL for concurrent readers, and BEGIN IMMEDIATE so read-then-write transactions take the
    write lock up front: a deferred BEGIN fails with 'database is locked' on the upgrade instead
    of waiting, which would turn ordinary contention into errors. synchronous=FULL syncs the WAL
    at every commit: with NORMAL a power loss can take back transactions already answered 2xx."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY)
        conn.exec_driver_sql("BEGIN" if read_only else sqlite_driver.WRITE_BEGIN)


class GroupCommit:
    """Concurrent write transactions of one process share one SQLite transaction.

    SQLite commits one transaction at a time, and with synchronous=FULL every commit waits for an
    fsync (milliseconds on most disks), so one commit per request caps a process at a few hundred
    writes per second however small they are. Here each transaction joins the open one (in a
    savepoint when others' work is already in it: a failure rolls back only its own), and one
    COMMIT, made when nobody else is waiting or the group is full, makes the whole group durable.
    A member returns only after that commit: "2xx means durable" holds. (PostgreSQL groups
    commits of concurrent connections by itself, so it does not go through here.)"""

    MAX_MEMBERS = 200
    MAX_OPEN_SECONDS = 0.01  # bounds the wait of the group's first member

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.conn: AsyncConnection | None = None
        self.members: list[asyncio.Future[None]] = []
        self.opened_at = 0.0

    @asynccontextmanager
    async def member(self) -> AsyncIterator[AsyncConnection]:
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        committed: asyncio.Future[None] | None = None
        try:
            conn = await self._open()
            async with self._undo_on_failure(conn):
                yield conn
            committed = asyncio.get_running_loop().create_future()
            self.members.append(committed)
        finally:
            try:
                if self._should_commit():
                    await self._commit()
            finally:
                self.lock.release()
        assert committed is not None  # a failed member re-raised above
        await committed

    @asynccontextmanager
    async def _undo_on_failure(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """A failed member's work is undone, and only its own: in a savepoint when the group
        already holds others' work; alone in the transaction, by rolling that back, which
        saves the two statements of a savepoint on every uncontended write."""
        if not self.members:
            try:
                yield
            except BaseException:
                await conn.rollback()
                raise
            return
        async with conn.begin_nested():  # released on success, rolled back on failure
            yield

    def _should_commit(self) -> bool:
        if self.conn is None or not self.members:
            return self.conn is not None and self.waiting == 0
        open_for = asyncio.get_running_loop().time() - self.opened_at
        return (
            self.waiting == 0
            or len(self.members) >= self.MAX_MEMBERS
            or open_for >= self.MAX_OPEN_SECONDS
        )

    async def _open(self) -> AsyncConnection:
        if self.conn is None:
            self.conn = await self.engine.connect()
        if not self.conn.in_transaction():
            await self.conn.begin()
            self.opened_at = asyncio.get_running_loop().time()
        return self.conn

    async def _commit(self) -> None:
        members, self.members = self.members, []
        conn = self.conn
        assert conn is not None
        try:
            await conn.commit()
        except BaseException as exc:
            # Nothing of the group is durable: every member fails, and a connection in an
            # unknown state is not reused.
            self.conn = None
            with contextlib.suppress(Exception):
                await conn.invalidate()
            for member in members:
                if not member.done():
                    member.set_exception(exc)
            raise
        for member in members:
            if not member.done():
                member.set_result(None)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


class Database:
    """Owns the engine. Repositories receive the connection of one transaction."""

    # Sized for the API's concurrency: connections beyond pool_size are opened per checkout and
    # closed on return, a reconnect per request once more requests are in flight than that.
    def __init__(self, url: str, *, pool_size: int = 32) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # hide_parameters: database errors are logged without the values bound to the statement.
        options: dict[str, Any] = {
            "json_serializer": _json_dumps,
            "pool_pre_ping": False,
            "hide_parameters": True,
        }
        if self.is_sqlite:
            options["async_creator"] = self._connect_sqlite
        else:
            options |= {"pool_size": pool_size, "max_overflow": pool_size // 2}
        self.engine = create_async_engine(url, **options)
        self.group: GroupCommit | None = None
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            self.group = GroupCommit(self.engine)

    async def _connect_sqlite(self) -> sqlite_driver.OneTripConnection:
        # The arguments SQLAlchemy itself would pass (path, URL query options).
        [database], kwargs = self.engine.sync_engine.dialect.create_connect_args(self.engine.url)
        return await sqlite_driver.connect(database, **kwargs)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; its block ends once it is committed (durable)."""
        if self.group is not None:
            async with self.group.member() as conn:
                yield conn
            return
        async with self.engine.begin() as conn:
            yield conn

    def writing(self, *, one_statement: bool) -> AbstractAsyncContextManager[AsyncConnection]:
        """Where a write runs: in a transaction, unless it writes with one statement on
        PostgreSQL (`one_statement`; later statements on the connection may only read). Such a
        statement is atomic on its own, so it runs outside any transaction block and commits by
        itself: one round trip where BEGIN and COMMIT around it take two more (pg_exchange).
        SQLite's writes always go through the group commit."""
        if one_statement and not self.is_sqlite:
            return self._autocommit()
        return self.transaction()

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that only reads. On SQLite it takes no write lock, so dashboards and
        lists never hold up the workers' reports (WAL lets readers and one writer proceed)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            async with conn.begin():
                yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def clock_offset(self) -> timedelta:
        """The database server's clock minus ours (PostgreSQL; SQLite is in process: zero). Read
        on an open connection whose statement is already prepared, so that only one query's
        round trip blurs it: half of that is the error. Timing the connection set-up too put
        the offset 10 ms out on a machine where connecting took 20 ms."""
        if self.is_sqlite:
            return timedelta(0)
        clock = text("SELECT clock_timestamp()")
        async with self.engine.connect() as conn:
            await conn.execute(clock)
            before = datetime.now(UTC)
            server: datetime = (await conn.execute(clock)).scalar_one()
            after = datetime.now(UTC)
        return server - (before + (after - before) / 2)

    async def migrate(self) -> None:
        """Apply Alembic migrations up to head (alembic's env runs its own event loop)."""
        await asyncio.to_thread(upgrade_to_head, self.url)

    async def dispose(self) -> None:
        if self.group is not None:
            await self.group.close()
        await self.engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), "head")
