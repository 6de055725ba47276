"""Real API and worker processes for end-to-end and fault tests. Each process logs to a file in
the test's tmp dir (printed on failure); everything is killed at teardown."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.utils.embedded_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = ROOT / "deploy/haproxy/haproxy.cfg"
FINAL = frozenset({"completed", "failed", "cancelled"})


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, every: float = 0.1
) -> Any:
    """Poll until `check` returns something truthy; fail with `what` at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    async def wait(self, timeout: float) -> int:
        code: int = await eventually(
            lambda: _returned(self.popen), timeout=timeout, what=f"{self.name} to exit"
        )
        return code - 1

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def _returned(popen: subprocess.Popen[bytes]) -> int:
    code = popen.poll()
    return 0 if code is None else code + 1


@dataclass
class Stack:
    """An API process and any number of worker processes sharing one database and Redis."""

    tmp: Path
    database_url: str
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    api_port: int = 0
    # Where the API listens; clients always use loopback. "0.0.0.0" lets processes in other
    # network namespaces reach it (the chaos suite's partitions).
    api_host: str = "127.0.0.1"
    procs: list[Proc] = field(default_factory=list)
    api: Proc | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **(extra_env or {}),
        }
        log = self.tmp / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    async def start_api(self) -> Proc:
        self.api_port = self.api_port or free_port()
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            self.api_host,
            "--port",
            str(self.api_port),
            "--log-level",
            "warning",
        ]
        self.api = self._spawn(f"api-{len(self.procs)}", args)
        await eventually(self._healthy, timeout=60, what="the API to answer /health")
        return self.api

    async def _healthy(self) -> bool:
        assert self.api is not None
        if self.api.popen.poll() is not None:
            raise AssertionError(f"API exited:\n{self.api.tail()}")
        return await answers_ok(f"{self.api_url}/health")

    def start_worker(
        self,
        worker_id: str,
        *options: str,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> Proc:
        """`wrapper`: a command that runs the worker (e.g. `ip netns exec NAME`)."""
        args = [
            *wrapper,
            sys.executable,
            "worker/worker_node.py",
            "--worker-id",
            worker_id,
            "--api-url",
            self.api_url,
            *options,
        ]
        return self._spawn(worker_id, args, env)

    async def wait_for_workers(self, *worker_ids: str, timeout: float = 60) -> None:
        async def registered() -> bool:
            async with httpx.AsyncClient(base_url=self.api_url, timeout=5) as client:
                workers = (await client.get("/api/workers")).json()["workers"]
            active = {w["worker_id"] for w in workers if w["status"] != "offline"}
            return set(worker_ids) <= active

        await eventually(registered, timeout=timeout, what=f"workers {worker_ids} to register")

    def start_balancer(
        self, servers: dict[str, str], *, bind: str = ":8000", wrapper: Sequence[str] = ()
    ) -> Proc:
        """HAProxy running the shipped configuration for these servers (balancer_config)."""
        haproxy = shutil.which("haproxy")
        assert haproxy is not None, "needs haproxy (apt-get install haproxy)"
        config = self.tmp / "haproxy.cfg"
        config.write_text(balancer_config(servers, bind))
        return self._spawn("haproxy", [*wrapper, haproxy, "-db", "-f", str(config)])

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.procs)


async def wait_for_status(
    http: httpx.AsyncClient, task_id: str, status: str, *, timeout: float = 30
) -> None:
    async def reached() -> bool:
        return bool((await http.get(f"/api/tasks/{task_id}")).json()["status"] == status)

    await eventually(reached, timeout=timeout, what=f"task {task_id} to be {status}")


async def get_json(url: str) -> dict[str, Any] | None:
    """The JSON object at `url`, or None while nothing answers there (yet)."""
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            body: dict[str, Any] = (await http.get(url)).json()
            return body
    except (httpx.TransportError, ValueError):
        return None


async def answers_ok(url: str) -> bool:
    """Whether `url` answers 200 (False while nothing listens there)."""
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(url)).status_code == 200
    except httpx.TransportError:
        return False


def balancer_config(servers: dict[str, str], bind: str = ":8000") -> str:
    """The shipped HAProxy configuration with these servers (name: host:port) instead of
    Docker's DNS discovery, listening on `bind`: what the balancer tests run."""
    lines = "\n".join(f"    server {name} {address} check" for name, address in servers.items())
    text = re.sub(r"^\s*server-template .*$", lines, HAPROXY_CONFIG.read_text(), flags=re.M)
    text = re.sub(r"^resolvers docker\n(?:    .*\n)+", "", text, flags=re.M)
    text = text.replace("bind :8000", f"bind {bind}")
    assert lines in text and f"bind {bind}" in text
    return text
