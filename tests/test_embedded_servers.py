"""The embedded Valkey/PostgreSQL launchers: real binaries, real crashes."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from app.utils.embedded_servers import PostgresServer, ValkeyServer, free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a SIGKILLed orphan may linger as one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# Not the session-wide `valkey`/`postgres` of conftest.py: these tests kill their servers.
@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    # appendfsync=always: every acknowledged write is on disk before the reply.
    with ValkeyServer(tmp_path / "valkey", appendfsync="always") as server:
        yield server


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path / "pg") as server:
        yield server


def _redis(server: ValkeyServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=2)


def test_free_port_is_bindable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_valkey_write_survives_sigkill_and_restart(own_valkey: ValkeyServer) -> None:
    port, old_pid = own_valkey.port, own_valkey.pid
    assert own_valkey.url == f"redis://127.0.0.1:{port}/0"
    client = _redis(own_valkey)
    try:
        assert client.set("task:1", "queued")
        own_valkey.kill()
        assert not own_valkey.is_running()
        assert old_pid is not None and not _pid_alive(old_pid)
        with pytest.raises(redis.ConnectionError):
            client.ping()

        own_valkey.restart()
        assert own_valkey.port == port and own_valkey.pid != old_pid
        assert client.get("task:1") == b"queued"  # replayed from the AOF
    finally:
        client.close()


def test_valkey_without_appendonly_forgets_on_sigkill(tmp_path: Path) -> None:
    with ValkeyServer(tmp_path / "volatile", appendonly=False) as server:
        client = _redis(server)
        try:
            client.set("k", "v")
            server.kill()
            server.restart()
            assert client.get("k") is None
        finally:
            client.close()


def test_valkey_pause_makes_clients_time_out(own_valkey: ValkeyServer) -> None:
    client = redis.Redis.from_url(own_valkey.url, socket_timeout=0.3)
    try:
        client.ping()  # connect before freezing the server
        own_valkey.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        own_valkey.resume()
        assert client.ping()
    finally:
        own_valkey.resume()
        client.close()


def test_valkey_stop_is_graceful_and_final(tmp_path: Path) -> None:
    server = ValkeyServer(tmp_path / "valkey")
    server.start()
    pid = server.pid
    server.stop()
    assert pid is not None and not _pid_alive(pid)
    assert not server.is_running()
    assert "ready to exit" in server.log_file.read_text()
    server.stop()  # idempotent


def test_servers_are_stopped_when_the_parent_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from app.utils.embedded_servers import ValkeyServer
        server = ValkeyServer({str(tmp_path / "valkey")!r})
        server.start()
        print(server.pid, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert not _pid_alive(int(out.stdout.split()[0]))


async def _insert_and_count(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        assert await conn.fetchval("select 1") == 1
        await conn.execute("create table if not exists runs (id serial primary key)")
        await conn.execute("insert into runs default values")
        count: int = await conn.fetchval("select count(*) from runs")
        return count
    finally:
        await conn.close()


async def test_postgres_database_survives_sigkill_and_restart(own_pg: PostgresServer) -> None:
    port, old_pid = own_pg.port, own_pg.pid
    url = own_pg.create_database("scheduler-test")
    assert url == f"postgresql://postgres@127.0.0.1:{port}/scheduler-test"
    assert await _insert_and_count(url) == 1

    own_pg.kill()  # the whole process group: postmaster and backends
    assert not own_pg.is_running()
    assert old_pid is not None and not _pid_alive(old_pid)

    own_pg.restart()  # crash recovery replays the WAL
    assert own_pg.port == port
    assert await _insert_and_count(url) == 2

    own_pg.drop_database("scheduler-test")
    databases = own_pg.psql("select datname from pg_database").split()
    assert "scheduler-test" not in databases


async def test_postgres_stop_then_start_keeps_the_cluster(own_pg: PostgresServer) -> None:
    url = own_pg.create_database("kept")
    own_pg.stop()
    assert not own_pg.is_running()
    own_pg.start()
    assert await _insert_and_count(url) == 1
