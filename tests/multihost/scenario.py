"""The faults of the scale-out proof, injected one after the other under a steady load, and what
is measured around each: throughput (completions per second, read from PostgreSQL every second)
before, during and after; the time for the lead to move; the time for a cut-off host's tasks to
start again elsewhere. At the end every accepted task must be complete with exactly one
recorded result."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.integration.harness import eventually
from tests.multihost.cluster import Cluster

BASELINE_WINDOW = 10.0  # seconds of throughput before a fault that it is compared with
RECOVERED_SHARE = 0.8  # "back within 20 %"
RECOVERY_BOUND = 30.0  # seconds after the fault ends
LEADER_BOUND = 15.0  # lock TTL (2 s at this sweep interval) + sweeps, with room for a busy host


@dataclass
class FaultResult:
    name: str
    started: float
    ended: float
    baseline: float = 0.0
    during: float = 0.0
    after: float = 0.0
    recovered_after: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def recovered(self) -> bool:
        return self.recovered_after is not None and self.recovered_after <= RECOVERY_BOUND


@dataclass
class Report:
    rate: float
    task_seconds: float
    shape: dict[str, Any]
    faults: list[FaultResult] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)
    accepted: int = 0
    given_up: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_tasks: int = 1  # tasks completed when cpu_seconds was read
    lost: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    def problems(self) -> list[str]:
        found = [f"{self.lost} tasks not completed"] if self.lost else []
        found += [f"{self.duplicates} tasks with more than one result"] if self.duplicates else []
        for fault in self.faults:
            if not fault.recovered:
                found.append(f"{fault.name}: throughput not back within {RECOVERY_BOUND:.0f} s")
            moved = fault.detail.get("leader_moved_s")
            if moved is not None and moved > LEADER_BOUND:
                found.append(f"{fault.name}: the lead moved after {moved:.1f} s")
        return found

    def as_dict(self) -> dict[str, Any]:
        faults = [{**asdict(f), "recovered": f.recovered} for f in self.faults]
        return {**asdict(self), "faults": faults, "problems": self.problems()}


class Throughput:
    """Completed tasks counted once a second, in the background."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _sample(self) -> None:
        while True:
            self.samples.append((time.time(), await self.cluster.completed()))
            await asyncio.sleep(1.0)

    def rate(self, start: float, end: float) -> float:
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(inside) < 2:
            return 0.0
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0)

    def recovered_after(self, end: float, baseline: float) -> float | None:
        """Seconds from `end` until the rate over the last 5 s is back to the share of baseline."""
        for t, _ in self.samples:
            if t >= end + 1 and self.rate(t - 5, t) >= RECOVERED_SHARE * baseline:
                return max(0.0, t - end)
        return None


class Scenario:
    def __init__(self, cluster: Cluster, *, rate: float, task_seconds: float) -> None:
        self.cluster = cluster
        self.rate = rate
        self.task_seconds = task_seconds
        self.throughput = Throughput(cluster)
        self.report = Report(rate, task_seconds, asdict(cluster.shape))

    async def run(self, faults: list[str], *, warmup: float, observe: float, cut: float) -> Report:
        began = time.time()
        steps: dict[str, Callable[[], Awaitable[FaultResult]]] = {
            "kill_leader": self.kill_leader,
            "worker_host_down": lambda: self.worker_host_down(cut),
            "api_cut_from_redis": lambda: self.api_cut_from_redis(cut),
            "redis_data_loss": self.redis_data_loss,
        }
        out = self.cluster.start_load(self.rate, self.task_seconds)
        self.throughput.start()
        try:
            await asyncio.sleep(warmup + BASELINE_WINDOW)  # the experiment's pace, not a wait
            for name in faults:
                result = await steps[name]()
                await asyncio.sleep(observe)
                self._measure(result)
                self.report.faults.append(result)
            self.report.cpu_seconds = self.cluster.cpu_seconds()
            self.report.cpu_tasks = max(1, await self.cluster.completed())
            end = await self.cluster.stop_load(out)
            self.report.accepted, self.report.given_up = end["accepted"], len(end["given_up"])
            await eventually(self._all_final, timeout=240, what="every accepted task to finish")
        finally:
            await self.throughput.stop()
        await self._check_results()
        self.report.samples = self.throughput.samples
        self.report.seconds = time.time() - began
        return self.report

    def _measure(self, result: FaultResult) -> None:
        rate = self.throughput.rate
        result.baseline = rate(result.started - BASELINE_WINDOW, result.started)
        result.during = rate(result.started, max(result.ended, result.started + 5))
        result.after = rate(result.ended + 5, time.time())
        result.recovered_after = self.throughput.recovered_after(result.ended, result.baseline)

    # --- faults ------------------------------------------------------------------------------

    async def kill_leader(self) -> FaultResult:
        [leader] = await eventually(self.cluster.leaders, timeout=LEADER_BOUND, what="a leader")
        result = FaultResult("kill_leader", time.time(), 0.0, detail={"killed": leader})
        self.cluster.apis[leader].signal(signal.SIGKILL)

        async def new_leader() -> list[str]:
            return [n for n in await self.cluster.leaders() if n != leader]

        [successor] = await eventually(new_leader, timeout=60, what="a new leader", every=0.05)
        result.detail |= {"successor": successor, "leader_moved_s": time.time() - result.started}
        result.ended = time.time()
        self.cluster.start_api(leader)  # restarted as a follower, as a supervisor would
        return result

    async def worker_host_down(self, seconds: float) -> FaultResult:
        host = await self._busiest_worker_host()
        result = FaultResult("worker_host_down", time.time(), 0.0, detail={"host": host})
        self.cluster.hosts.link_down(host)
        await asyncio.sleep(seconds)
        self.cluster.hosts.link_up(host)
        result.ended = time.time()
        result.detail["link_down_s"] = seconds
        return result

    async def _busiest_worker_host(self) -> str:
        """The worker host running the most tasks now: idle workers take claims unevenly, and a
        cut host with nothing running would show nothing."""
        assert self.cluster.db is not None
        rows = await self.cluster.db.fetch(
            "SELECT split_part(worker_id, '-', 1) AS host, count(*) AS running FROM tasks"
            " WHERE status = 'running' GROUP BY 1 ORDER BY 2 DESC"
        )
        hosts = [f"w{i + 1}" for i in range(self.cluster.shape.worker_hosts)]
        return next((r["host"] for r in rows if r["host"] in hosts), hosts[-1])

    async def api_cut_from_redis(self, seconds: float) -> FaultResult:
        api = self.cluster.api_names[-1]
        redis_ip = self.cluster.hosts.redis_ip
        result = FaultResult("api_cut_from_redis", time.time(), 0.0, detail={"api": api})
        self.cluster.hosts.cut(api, redis_ip)
        await asyncio.sleep(seconds)
        self.cluster.hosts.heal(api, redis_ip)
        result.ended = time.time()
        result.detail["cut_s"] = seconds
        return result

    async def redis_data_loss(self) -> FaultResult:
        result = FaultResult("redis_data_loss", time.time(), 0.0)
        await asyncio.to_thread(self.cluster.restart_valkey_empty)
        result.ended = time.time()
        return result

    # --- results -----------------------------------------------------------------------------

    async def _all_final(self) -> bool:
        assert self.cluster.db is not None
        open_tasks = await self.cluster.db.fetchval(
            "SELECT count(*) FROM tasks WHERE status NOT IN ('completed', 'failed', 'cancelled')"
        )
        return bool(open_tasks == 0)

    async def _check_results(self) -> None:
        db = self.cluster.db
        assert db is not None
        total = await db.fetchval("SELECT count(*) FROM tasks")
        done = await db.fetchval("SELECT count(*) FROM tasks WHERE status = 'completed'")
        # Every accepted task is in the store (more may be: a batch whose answer was lost), and
        # every task in the store is complete.
        self.report.lost = max(0, self.report.accepted - total) + (total - done)
        self.report.duplicates = await db.fetchval(
            "SELECT count(*) FROM (SELECT task_id FROM task_attempts WHERE outcome = 'completed'"
            " GROUP BY task_id HAVING count(*) > 1) AS twice"
        )
        without = await db.fetchval(
            "SELECT count(*) FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM task_attempts a"
            " WHERE a.task_id = t.task_id AND a.outcome = 'completed')"
        )
        self.report.duplicates += without  # a completed task must have its one result recorded
        for fault in self.report.faults:
            if fault.name == "worker_host_down":
                fault.detail |= await self._reassignment(fault)

    async def _reassignment(self, fault: FaultResult) -> dict[str, Any]:
        """Fault -> the next start of each attempt the cut-off host lost."""
        assert self.cluster.db is not None
        rows = await self.cluster.db.fetch(
            "SELECT extract(epoch FROM n.started_at) AS next_start FROM task_attempts a"
            " JOIN task_attempts n ON n.task_id = a.task_id AND n.attempt = a.attempt + 1"
            " WHERE a.outcome = 'worker_lost' AND a.worker_id LIKE $1",
            f"{fault.detail['host']}-%",
        )
        moved = sorted(float(r["next_start"]) - fault.started for r in rows)
        if not moved:
            return {"reassigned": 0}
        return {
            "reassigned": len(moved),
            "reassign_p50_s": statistics.median(moved),
            "reassign_max_s": moved[-1],
        }
