"""The scheduler spread over separate hosts (tests/multihost/world.py): PostgreSQL and Valkey on
the data host, API replicas each on a host of its own, HAProxy (the shipped configuration) on
the balancer's host, worker processes on the worker hosts, the load on the client's host.
Everything but the stores reaches the API only through the balancer."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil

from app.utils.embedded_servers import PostgresServer, ValkeyServer, free_port
from tests.integration.harness import Proc, Stack, answers_ok, eventually, get_json
from tests.multihost.world import Hosts

API_PORT = 8000


@dataclass
class Shape:
    apis: int = 3
    worker_hosts: int = 3
    workers_per_host: int = 2
    # Faster than the defaults so that a run takes minutes; the ratios between them are the
    # defaults' (lease = 2.5 heartbeats, sweeps several times per lease).
    lease_seconds: float = 5
    heartbeat_interval: float = 2
    sweep_interval: float = 0.5

    @property
    def host_names(self) -> list[str]:
        apis = [f"api{i + 1}" for i in range(self.apis)]
        workers = [f"w{i + 1}" for i in range(self.worker_hosts)]
        return [*apis, "lb", *workers, "client"]


class Cluster:
    def __init__(self, tmp: Path, shape: Shape) -> None:
        self.tmp = tmp
        self.shape = shape
        self.hosts = Hosts(shape.host_names)
        self.key = secrets.token_hex(32)
        self.postgres: PostgresServer | None = None
        self.valkey: ValkeyServer | None = None
        self.stack: Stack | None = None
        self.apis: dict[str, Proc] = {}
        self.load: Proc | None = None
        self.db: asyncpg.Connection | None = None

    # --- set-up ------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.hosts.create)
        database_url = await asyncio.to_thread(self._start_postgres)
        await asyncio.to_thread(self._start_valkey)
        assert self.valkey is not None
        redis_url = f"redis://{self.hosts.redis_ip}:{self.valkey.port}/0"
        env = {
            "ADMIN_API_KEY": self.key,
            "API_KEY": self.key,
            "LEASE_SECONDS": str(self.shape.lease_seconds),
            "HEARTBEAT_INTERVAL": str(self.shape.heartbeat_interval),
            "SWEEP_INTERVAL": str(self.shape.sweep_interval),
        }
        self.stack = Stack(self.tmp, database_url, redis_url, env=env)
        self.stack.api_port = API_PORT
        for name in self.api_names:
            self.start_api(name)
        for name in self.api_names:
            await eventually(partial(self.live, name), timeout=90, what=f"{name} to answer")
        servers = {name: f"{self.hosts[name].ip}:{API_PORT}" for name in self.api_names}
        self.stack.start_balancer(servers, wrapper=self.hosts["lb"].exec_prefix)
        ready = f"{self.balancer_url}/health/ready"
        await eventually(lambda: answers_ok(ready), timeout=30, what="the balancer to route")
        for host in range(1, self.shape.worker_hosts + 1):
            for n in range(1, self.shape.workers_per_host + 1):
                self._start_worker(f"w{host}", f"w{host}-{n}")
        await eventually(self._workers_registered, timeout=90, what="every worker to register")
        assert self.postgres is not None
        self.db = await asyncpg.connect(self.postgres.database_url("scheduler"))

    def _start_postgres(self) -> str:
        self.postgres = PostgresServer(
            self.tmp / "pg",
            fsync=True,
            settings={"listen_addresses": f"127.0.0.1,{self.hosts.postgres_ip}"},
        )
        self.postgres.start(timeout=60)
        # Trust the hosts' subnet too (the test world has no passwords); reload to apply.
        with (self.postgres.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.hosts.subnet} trust\n")
        self.postgres.psql("SELECT pg_reload_conf()")
        self.postgres.create_database("scheduler")
        return f"postgresql://postgres@{self.hosts.postgres_ip}:{self.postgres.port}/scheduler"

    def _start_valkey(self, port: int | None = None) -> None:
        bind = ["--bind", "127.0.0.1", self.hosts.redis_ip, "--protected-mode", "no"]
        self.valkey = ValkeyServer(
            self.tmp / "valkey", port or free_port(), appendonly=False, extra_args=bind
        )
        self.valkey.start()

    def restart_valkey_empty(self) -> None:
        """Kill Valkey and start it again, on the same address, with nothing in it."""
        assert self.valkey is not None
        port = self.valkey.port
        self.valkey.kill()
        shutil.rmtree(self.tmp / "valkey", ignore_errors=True)
        self._start_valkey(port)

    @property
    def api_names(self) -> list[str]:
        return [f"api{i + 1}" for i in range(self.shape.apis)]

    def start_api(self, name: str) -> Proc:
        assert self.stack is not None
        command = [*self.hosts[name].exec_prefix, sys.executable, "-m", "app.main"]
        command += ["--host", "0.0.0.0", "--port", str(API_PORT)]
        self.apis[name] = self.stack._spawn(f"{name}-{len(self.stack.procs)}", command)
        return self.apis[name]

    def _start_worker(self, host: str, worker_id: str) -> None:
        assert self.stack is not None
        # The later --api-url wins over the stack's own (loopback, not reachable from a host).
        wrapper = self.hosts[host].exec_prefix
        self.stack.start_worker(worker_id, "--api-url", self.balancer_url, wrapper=wrapper)

    def start_load(self, rate: float, task_seconds: float) -> Path:
        assert self.stack is not None
        out = self.tmp / "load.jsonl"
        command = [*self.hosts["client"].exec_prefix, sys.executable, "-m", "tests.multihost.load"]
        command += ["--url", self.balancer_url, "--rate", str(rate), "--task", str(task_seconds)]
        self.load = self.stack._spawn("load", [*command, "--out", str(out)])
        return out

    async def stop_load(self, out: Path) -> dict[str, Any]:
        assert self.load is not None
        self.load.signal(signal.SIGTERM)
        await self.load.wait(timeout=180)
        last: dict[str, Any] = orjson.loads(out.read_bytes().splitlines()[-1])
        assert last.get("done"), f"the load generator did not finish:\n{self.load.tail()}"
        return last

    # --- observation -------------------------------------------------------------------------

    @property
    def balancer_url(self) -> str:
        return f"http://{self.hosts['lb'].ip}:{API_PORT}"

    def url_of(self, name: str) -> str:
        return f"http://{self.hosts[name].ip}:{API_PORT}"

    async def live(self, name: str) -> dict[str, Any] | None:
        return await get_json(f"{self.url_of(name)}/health/live")

    async def leaders(self) -> list[str]:
        alive = [n for n in self.api_names if self.apis[n].popen.poll() is None]
        answers = await asyncio.gather(*(self.live(n) for n in alive))
        return [n for n, body in zip(alive, answers, strict=True) if body and body.get("leader")]

    async def _workers_registered(self) -> bool:
        headers = {"X-API-Key": self.key}
        async with httpx.AsyncClient(timeout=5, headers=headers) as http:
            workers = (await http.get(f"{self.balancer_url}/api/workers")).json()["workers"]
        online = {w["worker_id"] for w in workers if w["status"] != "offline"}
        return len(online) >= self.shape.worker_hosts * self.shape.workers_per_host

    async def completed(self) -> int:
        assert self.db is not None
        count: int = await self.db.fetchval("SELECT count(*) FROM tasks WHERE status = 'completed'")
        return count

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each role's live processes (with their children: PostgreSQL's
        backends, a worker's pool). A replica that was killed took its count with it."""
        assert self.stack is not None
        roles: dict[str, float] = {}
        for proc in self.stack.procs:
            role = re.sub(r"\d*-.*$", "", proc.name)  # api1-3 -> api, w2-1 -> w
            roles[role] = roles.get(role, 0.0) + _cpu_of(proc.popen.pid)
        for role, server in (("postgres", self.postgres), ("valkey", self.valkey)):
            if server is not None and server.pid is not None:
                roles[role] = _cpu_of(server.pid)
        return {("workers" if k == "w" else k): round(v, 2) for k, v in roles.items()}

    # --- tear-down ---------------------------------------------------------------------------

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
        if self.stack is not None:
            self.stack.stop_all()
        for server in (self.valkey, self.postgres):
            if server is not None:
                await asyncio.to_thread(server.stop)
        await asyncio.to_thread(self.hosts.close)

    def logs(self) -> str:
        return self.stack.logs() if self.stack else ""


def _cpu_of(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for member in family:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total
