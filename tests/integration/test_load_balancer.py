"""Two API replicas behind a real HAProxy (Debian's package) running the shipped configuration
(deploy/haproxy/haproxy.cfg, its server line replaced by the two replicas), one PostgreSQL and
one Valkey; workers and the client reach the API only through the balancer.

Killing the leading replica: submissions keep succeeding through the balancer, leadership moves
to the survivor, and every accepted task completes exactly once. The killed replica, restarted,
takes traffic again once its readiness check passes."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import uuid

import httpx
import pytest

from app.utils.embedded_servers import PostgresServer, free_port
from tests.integration.harness import Proc, Stack, answers_ok, eventually, get_json

HAPROXY = shutil.which("haproxy")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)"
    ),
]
SUBMITTED = re.compile(r'^dts_tasks_submitted_total\{task_type="echo"\} (\S+)$', re.M)
LEADER_BOUND = 10.0  # lock TTL (2 s here) + a sweep, with room for a loaded CI machine


class Replicas:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ports = [free_port(), free_port()]
        self.procs: dict[int, Proc] = {}

    async def start(self, index: int) -> None:
        port = self.ports[index]
        command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning"]
        self.procs[index] = self.stack._spawn(f"api{index}-{len(self.stack.procs)}", command)
        await eventually(lambda: self.live(index), timeout=60, what=f"replica {index} to answer")

    async def live(self, index: int) -> dict[str, object] | None:
        return await get_json(f"http://127.0.0.1:{self.ports[index]}/health/live")

    async def leaders(self) -> list[int]:
        """The running replicas that say they lead (a list, so that replica 0 is truthy)."""
        running = [i for i, proc in self.procs.items() if proc.popen.poll() is None]
        return [i for i in running if (await self.live(i) or {}).get("leader")]

    async def submitted(self, index: int) -> float:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{self.ports[index]}/metrics")).text
        found = SUBMITTED.search(text)
        return float(found.group(1)) if found else 0.0


async def submit(http: httpx.AsyncClient, task_id: str) -> int:
    """One submission with a task id, so resending after a lost answer is safe (the API answers
    an identical resubmission with the task). Returns how many answers were errors."""
    errors = 0
    for _ in range(20):
        try:
            answer = await http.post("/api/tasks", json={"task_id": task_id, "task_type": "echo"})
            if answer.status_code in (200, 201):
                return errors
            assert answer.status_code in (502, 503), answer.text
        except httpx.TransportError:
            pass
        errors += 1
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task_id} was never accepted")


async def submit_many(http: httpx.AsyncClient, prefix: str, count: int) -> int:
    errors = await asyncio.gather(*(submit(http, f"{prefix}-{i}") for i in range(count)))
    return sum(errors)


@pytest.fixture
async def balanced(stack: Stack, postgres: PostgresServer | None) -> Replicas:
    if postgres is None:
        pytest.skip("needs the private PostgreSQL server")
    stack.database_url = postgres.create_database(f"lb_{uuid.uuid4().hex[:12]}")
    replicas = Replicas(stack)
    await replicas.start(0)
    await replicas.start(1)
    stack.api_port = free_port()  # the stack's API address, used by its workers, is the balancer
    servers = {f"api{i}": f"127.0.0.1:{port}" for i, port in enumerate(replicas.ports)}
    stack.start_balancer(servers, bind=f"127.0.0.1:{stack.api_port}")
    ready = f"{stack.api_url}/health/ready"
    await eventually(lambda: answers_ok(ready), timeout=30, what="the balancer to route")
    return replicas


async def test_killing_the_leading_replica_behind_the_balancer_loses_nothing(
    stack: Stack, balanced: Replicas
) -> None:
    stack.start_worker("lb-w1")
    stack.start_worker("lb-w2")
    await stack.wait_for_workers("lb-w1", "lb-w2")
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
        await submit_many(http, "before", 200)
        assert min([await balanced.submitted(0), await balanced.submitted(1)]) > 0, (
            "the balancer sent every submission to one replica"
        )
        [leader] = await eventually(balanced.leaders, timeout=LEADER_BOUND, what="a leader")
        survivor = 1 - leader

        balanced.procs[leader].signal(signal.SIGKILL)
        killed_at = asyncio.get_running_loop().time()
        during = asyncio.create_task(submit_many(http, "during", 200))
        await eventually(
            lambda: _leads(balanced, survivor), timeout=LEADER_BOUND, what="the lead to move"
        )
        handover = asyncio.get_running_loop().time() - killed_at
        await during

        # Once the balancer has marked the dead replica down, nothing fails any more.
        assert await submit_many(http, "after", 100) == 0
        await balanced.start(leader)
        await eventually(
            lambda: _serves(balanced, leader), timeout=30, what="the restarted replica to serve"
        )

        batches = {"before": 200, "during": 200, "after": 100}
        ids = [f"{prefix}-{i}" for prefix, count in batches.items() for i in range(count)]
        await eventually(lambda: _all_completed(http, ids), timeout=90, what="all to complete")
    print(f"leadership moved {handover:.2f} s after the SIGKILL")


async def _leads(replicas: Replicas, index: int) -> bool:
    return await replicas.leaders() == [index]


async def _serves(replicas: Replicas, index: int) -> bool:
    async with httpx.AsyncClient(base_url=replicas.stack.api_url, timeout=10) as http:
        await submit_many(http, f"back-{uuid.uuid4().hex[:6]}", 20)
    return await replicas.submitted(index) > 0


async def _all_completed(http: httpx.AsyncClient, ids: list[str]) -> bool:
    for task_id in ids:
        task = (await http.get(f"/api/tasks/{task_id}")).json()
        if task["status"] != "completed":
            return False
        assert task["attempts"] and sum(a["outcome"] == "completed" for a in task["attempts"]) == 1
    return True
