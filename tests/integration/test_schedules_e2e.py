"""Two API processes on one PostgreSQL fire a 1-second schedule: only the leader fires, and when
it is killed (SIGKILL) the other takes over and fires what was due (catch_up "all"). Over the
run every fire time from the first to the last has exactly one task: no duplicate, no gap."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
import pytest

from app.utils.embedded_servers import PostgresServer
from tests.integration.harness import Proc, Stack, eventually

pytestmark = pytest.mark.e2e

SCHEDULE = {
    "schedule_id": "beat",
    "interval_seconds": 1,
    "catch_up": "all",
    "task": {"task_type": "beat"},
}


async def start_api(stack: Stack) -> tuple[Proc, str]:
    stack.api_port = 0  # a port of its own for each process
    proc = await stack.start_api()
    return proc, stack.api_url


def fires_logged(proc: Proc) -> list[int]:
    """Tasks this process made per fire step, from its structured log."""
    text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
    return [
        int(line.split('"created": ', 1)[1].split(",", 1)[0])
        for line in text.splitlines()
        if '"schedule.fired"' in line
    ]


def fired(proc: Proc) -> int:
    return sum(fires_logged(proc))


async def fire_times(http: httpx.AsyncClient) -> list[datetime]:
    page = await http.get("/api/tasks", params={"task_type": "beat", "limit": 1000})
    ids = [task["task_id"] for task in page.json()["tasks"]]
    assert all(i.startswith("beat:") for i in ids)
    return sorted(datetime.fromisoformat(i.removeprefix("beat:")) for i in ids)


async def test_two_api_processes_fire_each_time_once_across_a_leader_crash(
    stack: Stack, postgres: PostgresServer | None
) -> None:
    if postgres is None:
        pytest.skip("needs the private PostgreSQL server")
    stack.database_url = postgres.create_database(f"s_{uuid.uuid4().hex[:12]}")
    first, first_url = await start_api(stack)
    second, second_url = await start_api(stack)
    async with (
        httpx.AsyncClient(base_url=first_url, timeout=10) as one,
        httpx.AsyncClient(base_url=second_url, timeout=10) as two,
    ):
        assert (await one.post("/api/schedules", json=SCHEDULE)).status_code == 201

        async def some_fired() -> bool:
            return len(await fire_times(two)) >= 6

        await eventually(some_fired, timeout=20, what="the first fires")
        leader, survivor, survivor_http = (first, second, two)
        if fired(second) > 0:
            leader, survivor, survivor_http = (second, first, one)
        assert fired(survivor) == 0, "only the leader fires"
        before = await fire_times(survivor_http)
        leader.kill()
        crash = before[-1]

        async def taken_over() -> bool:
            times = await fire_times(survivor_http)
            return fired(survivor) > 0 and times[-1] >= crash + timedelta(seconds=8)

        await eventually(taken_over, timeout=20, what="the survivor to fire after the crash")
        paused = await survivor_http.patch("/api/schedules/beat", json={"enabled": False})
        assert paused.status_code == 200  # committed: no fire after this
        times = await fire_times(survivor_http)
    span = int((times[-1] - times[0]).total_seconds()) + 1
    assert len(times) == len(set(times)) == span, f"gaps or duplicates in {times}"

    async def each_made_once() -> bool:
        # Every task made by exactly one process, the leader of its moment (a fire's log line
        # follows its commit, so the last may still be on its way).
        return fired(leader) + fired(survivor) == len(times)

    await eventually(each_made_once, timeout=5, what="each task to be logged by one leader")
    # The survivor's first step caught up: the times missed while the lock expired, and now's.
    assert fires_logged(survivor)[0] >= 2
    print(f"fires={len(times)} before_crash={len(before)} by_survivor={fired(survivor)}")
