"""Fault scenarios against the real stack, shared by the short test suite and the long runner.

Every scenario starts its own world (`ChaosEnv`): a private Valkey, a SQLite file or a private
PostgreSQL server, the API and worker processes (tests/integration/harness.py), with leases of
2 s so recovery is fast. It injects `faults` faults of one kind while tasks run, then calls
`check_invariants`, the one place where the guarantees are checked for every scenario:

- every accepted task (and every task the database holds) reaches a final state;
- exactly one result is recorded: a completed task has exactly one attempt with outcome
  "completed" (the task's worker is that attempt's), a final task has no attempt left "running";
- no task ran more often than its attempts say: the "task.started" events of all worker logs,
  counted per task, never exceed the task's attempt number.

What a scenario measures goes into an `Outcome` (faults, tasks, lost, duplicate results, time to
detect and to reassign); its `violations` list what broke. The test asserts there are none; the
long runner counts them in its report."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import os
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import Settings
from app.services.keys import RedisKeys
from app.utils.embedded_servers import PostgresServer, ValkeyServer, free_port
from tests.chaos import system
from tests.integration.harness import FINAL, Proc, Stack, eventually

LEASE_SECONDS = 2.0
API_ENV = {
    "LEASE_SECONDS": "2",
    "SWEEP_INTERVAL": "0.2",
    "HEARTBEAT_INTERVAL": "1",
    "RETRY_BACKOFF_BASE": "0.1",
}
SETTLE_TIMEOUT = 90.0  # every accepted task must be final this long after the last fault
SUBMIT_CONCURRENCY = 16
OK = frozenset({200, 201})

TaskRef = tuple[str, int]  # (task_id, attempt)
# A scenario that kills workers kills none running an attempt numbered above this: a task is cut
# at most this often (plus one kill racing the choice), well within MAX_WORKER_LOSSES.
MAX_CUTS = 2

# Open bugs the chaos suite found, each pinned by a strict xfail test in test_chaos.py (listed in
# the long report). The scenarios avoid triggering them; remove an entry with its xfail marker.
KNOWN_BUGS: dict[str, str] = {}
# Found by the suite and fixed since; their tests stay as regression tests.
FIXED_BUGS = {
    "B1": "SIGTERM/SIGINT to the worker's process group (systemd's default, Ctrl-C) killed its "
    "process-pool children: the running process task ended 'error' instead of finishing in the "
    "grace period; fixed in worker/task_executor.py (pool processes ignore both) "
    "(test_sigterm_to_the_process_group_lets_process_tasks_finish)",
    "B2": "a task started after its Redis claim lapsed ran without any lease and stayed "
    "'running' forever if its worker then died; fixed in Scheduler.start_claimed (re-takes the "
    "lease) and Recovery.restore_missing_leases "
    "(test_a_task_started_after_its_claim_lapsed_is_recovered_when_its_worker_dies)",
    "B3": "while PostgreSQL started up (SQLSTATE 57P03, e.g. crash recovery) the API answered "
    "500 instead of 503 + Retry-After, and a worker dropped a report answered 500, so its task "
    "ran again; fixed in app/main.py:_is_outage and worker/api_client.py "
    "(test_postgres_starting_up_is_an_outage_not_an_internal_error)",
    "B4": "a heartbeat in flight when a worker shut down landed after its deregistration and "
    "listed the departed worker as active until it was declared lost; fixed in WorkerNode.run "
    "and repositories.heartbeat_worker "
    "(test_a_late_heartbeat_does_not_bring_back_a_deregistered_worker)",
    "P1": "a worker cut off from the API but not from Valkey kept renewing the leases of its "
    "attempts (its lease keeper needs only Valkey), so they stayed 'running' on it for the whole "
    "partition; fixed in WorkerNode.held_leases (no lease is renewed once the scheduler has not "
    "answered for LEASE_SECONDS; a busy worker probes /health/live when nothing else reached it) "
    "(test_worker_cut_off_from_the_api_has_its_tasks_reassigned)",
    "P2": "a worker running its transitions itself (--database-url) used its own clock as the "
    "scheduler's: 30 s behind, it recorded attempts as started before their task was created, "
    "and its clock set the start's scheduled_at guard, backoffs and database leases; fixed in "
    "worker/transport.py (ServerClock: the database server's time, read every 30 s) "
    "(test_a_worker_running_its_own_transitions_records_the_schedulers_time)",
    "B5": "SIGTERM/SIGINT to the worker's process group while its process pool was starting "
    "killed the pool's processes before their initializer could ignore the signal; fixed in "
    "worker/task_executor.py (pool processes start with the signals blocked) "
    "(test_sigterm_to_the_process_group_while_the_pool_starts_lets_the_task_finish)",
}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault. Times are wall-clock seconds (time.time()), comparable with the
    database's timestamps since everything runs on this machine."""

    at: float
    target: str = ""
    held: list[TaskRef] = field(default_factory=list)  # attempts the target was running
    pending: list[str] = field(default_factory=list)  # tasks waiting in the queue at `at`
    detected_at: float | None = None
    recovered_at: float | None = None  # infrastructure back (restart done)
    resumed_at: float | None = None  # service back to normal after that


@dataclass
class Outcome:
    scenario: str
    faults: int = 0
    accepted: int = 0  # tasks the API answered 2xx for
    tasks: int = 0  # tasks in the database at the end (accepted ones and any whose answer was lost)
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0  # accepted but missing, or not final by the deadline
    duplicates: int = 0  # tasks with more than one recorded result
    overruns: int = 0  # tasks that ran more often than their attempts say
    detect: list[float] = field(default_factory=list)
    reassign: list[float] = field(default_factory=list)
    rejoin: list[float] = field(default_factory=list)  # partition healed -> worker runs again
    violations: list[str] = field(default_factory=list)
    error: str | None = None  # the scenario itself broke off (an exception)
    seconds: float = 0.0

    def violate(self, message: str) -> None:
        self.violations.append(message)

    def assert_ok(self) -> None:
        if self.violations:
            shown = "\n  ".join(self.violations[:30])
            more = len(self.violations) - 30
            raise AssertionError(
                f"{self.scenario}: {len(self.violations)} violation(s):\n  {shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
            )

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["detect"] = [round(x, 3) for x in self.detect]
        data["reassign"] = [round(x, 3) for x in self.reassign]
        data["rejoin"] = [round(x, 3) for x in self.rejoin]
        return data


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# --------------------------------------------------------------------------------------------
# The world of one scenario
# --------------------------------------------------------------------------------------------


def parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def log_events(paths: Iterable[Path], event: str) -> list[dict[str, Any]]:
    """JSON log lines with this event name (other lines, e.g. tracebacks, are skipped)."""
    found = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


@dataclass
class SubmitResult:
    accepted: set[str] = field(default_factory=set)
    statuses: Counter[int | str] = field(default_factory=Counter)


class ChaosEnv:
    """Private Valkey (+ PostgreSQL), and the API and workers as processes; all torn down on
    exit. Use `async with ChaosEnv(tmp) as env:`."""

    def __init__(
        self,
        tmp: Path,
        *,
        postgres: bool = False,
        appendonly: bool = False,
        namespaces: int = 0,
        small_disk: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """`namespaces`: network namespaces for workers to run in (`start_worker(netns=...)`);
        the API and Valkey then also listen on this side's addresses of their links.
        `small_disk`: the SQLite file lives on a 32 MB tmpfs (`self.disk`) that can be filled.
        `env`: settings for the API and workers on top of API_ENV."""
        self.tmp = tmp
        self.use_postgres = postgres
        self.appendonly = appendonly
        self.valkey = ValkeyServer(tmp / "valkey", appendonly=appendonly)
        self.postgres: PostgresServer | None = PostgresServer(tmp / "pg") if postgres else None
        self.network = system.Network(namespaces) if namespaces else None
        self.disk = system.SmallDisk(tmp / "disk", size_mb=32) if small_disk else None
        self.env = {**API_ENV, **(env or {})}
        self.stack: Stack | None = None
        self._http: httpx.AsyncClient | None = None
        self._redis: Redis | None = None

    async def __aenter__(self) -> ChaosEnv:
        try:
            api_host = await asyncio.to_thread(self._machine)
            await asyncio.to_thread(self.valkey.start)
            if self.postgres is not None:
                await asyncio.to_thread(self.postgres.start, 60)
                database_url = await asyncio.to_thread(self.postgres.create_database, "chaos")
            else:
                folder = self.tmp if self.disk is None else self.disk.path
                database_url = f"sqlite:///{folder / 'chaos.db'}"
            self.stack = Stack(
                tmp=self.tmp,
                database_url=database_url,
                redis_url=self.valkey.url,
                env=self.env,
                api_port=free_port(),
                api_host=api_host,
            )
        except BaseException:
            await self.close()
            raise
        return self

    def _machine(self) -> str:
        """Set up the namespaces and the small disk; returns where the API must listen."""
        if self.disk is not None:
            self.disk.mount()
        if self.network is None:
            return "127.0.0.1"
        self.network.create()
        # Reachable from the namespaces: Valkey on this side's link addresses too, the API on
        # every address (a test-only world: nothing else is on these links).
        bind = ["--bind", "127.0.0.1", *self.network.root_addresses, "--protected-mode", "no"]
        self.valkey = ValkeyServer(self.tmp / "valkey", appendonly=self.appendonly, extra_args=bind)
        # Not on loopback, the API would require keys: this world has none.
        self.env.setdefault("AUTH_REQUIRED", "false")
        return "0.0.0.0"

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.stack is not None:
            for proc in self.stack.procs:  # a frozen process must wake to die cleanly
                proc.signal(signal.SIGCONT)
            self.stack.stop_all()
        if self._http is not None:
            await self._http.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        await asyncio.to_thread(self.valkey.stop)
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        # After every process inside has died: a namespace lives as long as one does.
        if self.network is not None:
            await asyncio.to_thread(self.network.close)
        if self.disk is not None:
            await asyncio.to_thread(self.disk.unmount)

    # --- processes ---------------------------------------------------------------------------

    @property
    def processes(self) -> Stack:
        assert self.stack is not None, "use ChaosEnv as an async context manager"
        return self.stack

    async def start_api(self) -> Proc:
        api = await self.processes.start_api()
        await self.reset_http()  # pooled connections to a killed API are useless
        return api

    def start_worker(
        self,
        worker_id: str,
        *options: str,
        netns: system.Namespace | None = None,
        skew: int = 0,
    ) -> Proc:
        """A worker process; inside network namespace `netns` (it reaches the API and Valkey
        through the namespace's link), with its wall clock `skew` seconds off."""
        env: dict[str, str] = {}
        wrapper: list[str] = []
        if netns is not None:
            wrapper = netns.exec_prefix
            env["REDIS_URL"] = f"redis://{netns.redis_ip}:{self.valkey.port}/0"
            api_url = f"http://{netns.api_ip}:{self.processes.api_port}"
            options = (*options, "--api-url", api_url)  # the later --api-url wins
        if skew:
            env |= system.skewed_clock_env(skew)
        return self.processes.start_worker(worker_id, *options, env=env, wrapper=wrapper)

    def worker_logs(self) -> list[Path]:
        return sorted({p.log for p in self.processes.procs if not p.name.startswith("api-")})

    def logs(self) -> str:
        return self.processes.logs() if self.stack is not None else ""

    # --- clients -----------------------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.processes.api_url, timeout=30)
        return self._http

    async def reset_http(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.valkey.url, socket_timeout=5)
        return self._redis

    async def epoch_present(self) -> bool:
        try:
            return bool(await self.redis.exists(RedisKeys().epoch))
        except (RedisError, OSError):
            return False

    # --- API helpers -------------------------------------------------------------------------

    async def submit(
        self, specs: Sequence[dict[str, Any]], *, concurrency: int = SUBMIT_CONCURRENCY
    ) -> SubmitResult:
        """POST each task; transport errors are recorded, not raised."""
        result = SubmitResult()
        gate = asyncio.Semaphore(concurrency)

        async def one(spec: dict[str, Any]) -> None:
            async with gate:
                try:
                    answer = await self.http.post("/api/tasks", json=spec)
                except httpx.TransportError as exc:
                    result.statuses[type(exc).__name__] += 1
                    return
            result.statuses[answer.status_code] += 1
            if answer.status_code in OK:
                result.accepted.add(answer.json()["task_id"])

        await asyncio.gather(*(one(s) for s in specs))
        return result

    async def list_tasks(self, **filters: str) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = []
        while True:
            params = {**filters, "limit": "1000", "offset": str(len(tasks))}
            page = (await self.http.get("/api/tasks", params=params)).json()
            tasks += page["tasks"]
            if not page["tasks"] or len(tasks) >= page["total"]:
                return tasks

    async def count(self, status: str) -> int:
        page = (await self.http.get("/api/tasks", params={"status": status, "limit": "1"})).json()
        return int(page["total"])

    async def queue_drained(self, *, timeout: float = 120) -> None:
        """Wait until no task is pending (all taken by workers). Between worker faults this
        (with `moved_on`) keeps the load below capacity, so that "reassign" measures recovery,
        not queueing behind a backlog the scenario itself piled up."""

        async def drained() -> bool:
            return await self.count("pending") == 0

        await eventually(drained, timeout=timeout, what="the queue to drain", every=0.05)

    async def moved_on(self, held: Sequence[TaskRef], *, timeout: float = 60) -> None:
        """Wait until each of these attempts is over and its task has started again (or
        finished): the previous fault has been recovered from before the next one is injected."""

        async def all_moved() -> bool:
            tasks = await self.details(task_id for task_id, _ in held)
            return all(
                tasks[t]["attempt"] > n or tasks[t]["status"] in FINAL
                for t, n in held
                if t in tasks
            )

        await eventually(all_moved, timeout=timeout, what="the last fault's tasks to move on")

    async def running_by_worker(self) -> dict[str, list[TaskRef]]:
        held: dict[str, list[TaskRef]] = {}
        for task in await self.list_tasks(status="running"):
            held.setdefault(task["worker_id"], []).append((task["task_id"], task["attempt"]))
        return held

    async def running_by_worker_named(self, worker_id: str) -> list[TaskRef]:
        return (await self.running_by_worker()).get(worker_id, [])

    async def workers(self) -> list[dict[str, Any]]:
        body: dict[str, Any] = (await self.http.get("/api/workers")).json()
        workers: list[dict[str, Any]] = body["workers"]
        return workers

    async def task(self, task_id: str) -> dict[str, Any]:
        answer = await self.http.get(f"/api/tasks/{task_id}")
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    async def details(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        found: dict[str, dict[str, Any]] = {}

        async def one(task_id: str) -> None:
            async with gate:
                answer = await self.http.get(f"/api/tasks/{task_id}")
            if answer.status_code == 200:
                found[task_id] = answer.json()

        await asyncio.gather(*(one(t) for t in task_ids))
        return found


class WorkerPool:
    """Worker processes of a scenario; a worker lost to a fault is replaced by a fresh one."""

    def __init__(
        self, env: ChaosEnv, prefix: str, size: int, *options: str, skews: Sequence[int] = (0,)
    ) -> None:
        """`skews`: the wall-clock offsets of the workers, in turn (see ChaosEnv.start_worker)."""
        self.env, self.prefix, self.size, self.options = env, prefix, size, options
        self.skews = skews
        self.live: list[Proc] = []
        self.spawned = 0

    def spawn(self) -> Proc:
        skew = self.skews[self.spawned % len(self.skews)]
        proc = self.env.start_worker(f"{self.prefix}-{self.spawned}", *self.options, skew=skew)
        self.spawned += 1
        self.live.append(proc)
        return proc

    async def start(self) -> None:
        for _ in range(self.size):
            self.spawn()
        await self.env.processes.wait_for_workers(*(p.name for p in self.live))

    def replace(self, proc: Proc) -> Proc:
        self.live.remove(proc)
        return self.spawn()

    async def busy(
        self, rng: random.Random, *, timeout: float = 30, max_attempt: int | None = None
    ) -> tuple[Proc, list[TaskRef]]:
        """A live worker of the pool that is running tasks right now (chosen at random).
        `max_attempt`: only a worker whose running attempts are all at most that number, so that
        a scenario that kills workers does not cut the same task again and again (past
        MAX_WORKER_LOSSES it would fail, rightly, but that is not what such a scenario tests)."""

        def eligible(refs: list[TaskRef]) -> bool:
            return bool(refs) and (max_attempt is None or all(n <= max_attempt for _, n in refs))

        async def find() -> tuple[Proc, list[TaskRef]] | None:
            held = await self.env.running_by_worker()
            busy = [
                p for p in self.live if eligible(held.get(p.name, [])) and p.popen.poll() is None
            ]
            if not busy:
                return None
            chosen = rng.choice(busy)
            return chosen, held[chosen.name]

        found: tuple[Proc, list[TaskRef]] = await eventually(
            find, timeout=timeout, what="a pool worker running tasks", every=0.05
        )
        return found

    async def running_on(self, proc: Proc) -> list[TaskRef]:
        return (await self.env.running_by_worker()).get(proc.name, [])


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def sleep_task(task_id: str, seconds: float, **extra: Any) -> dict[str, Any]:
    """Async handler (runs on the worker's event loop)."""
    return {
        "task_id": task_id,
        "task_type": "sleep",
        "payload": {"parameters": {"seconds": round(seconds, 3)}},
        **extra,
    }


@functools.cache
def cpu_rounds_per_second() -> float:
    """How many SHA-256 rounds (what the `cpu` handler does) one core of this machine runs per
    second, measured once (about 0.1 s)."""
    digest, rounds, started = b"seed", 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < 0.1:
        for _ in range(10_000):
            digest = hashlib.sha256(digest).digest()
        rounds += 10_000
    return rounds / elapsed


def cpu_task(task_id: str, seconds: float, **extra: Any) -> dict[str, Any]:
    """Process-pool handler: SHA-256 rounds for about `seconds` of one idle core."""
    iterations = max(1, int(seconds * cpu_rounds_per_second()))
    return {
        "task_id": task_id,
        "task_type": "cpu",
        "payload": {"parameters": {"iterations": iterations}},
        **extra,
    }


def make_task(handler: str, task_id: str, seconds: float) -> dict[str, Any]:
    return (cpu_task if handler == "cpu" else sleep_task)(task_id, seconds)


# --------------------------------------------------------------------------------------------
# The invariants, checked after every scenario
# --------------------------------------------------------------------------------------------


async def check_invariants(
    env: ChaosEnv,
    outcome: Outcome,
    accepted: set[str],
    *,
    timeout: float = SETTLE_TIMEOUT,
    expect_completed: bool = True,
) -> dict[str, dict[str, Any]]:
    """Wait (up to `timeout`) until every task is final, then check the guarantees of the module
    docstring; what breaks is added to `outcome.violations`. Returns each task with its attempts.

    The universe is every task in the database plus every accepted id: a submission whose answer
    was lost (the API died) may exist, and then it must end like any other."""
    outcome.accepted = len(accepted)

    async def settled() -> list[dict[str, Any]] | None:
        tasks = await env.list_tasks()
        ids = {t["task_id"] for t in tasks}
        if accepted <= ids and all(t["status"] in FINAL for t in tasks):
            return tasks or [{}]
        return None

    try:
        await eventually(settled, timeout=timeout, what="every task to be final", every=0.25)
    except AssertionError:
        outcome.violate(f"not every task was final {timeout:.0f}s after the last fault")
    listed = await env.list_tasks()
    details = await env.details([t["task_id"] for t in listed])
    started = Counter(e.get("task_id") for e in log_events(env.worker_logs(), "task.started"))
    outcome.tasks = len(details)

    for task_id in sorted(accepted - set(details)):
        outcome.lost += 1
        outcome.violate(f"{task_id}: accepted (2xx) but not in the database")
    for task_id, task in sorted(details.items()):
        _check_task(outcome, task_id, task, started[task_id], expect_completed)
    return details


def _check_task(
    outcome: Outcome, task_id: str, task: dict[str, Any], started: int, expect_completed: bool
) -> None:
    status, attempts = task["status"], task.get("attempts") or []
    outcomes = [a["outcome"] for a in attempts]
    if status not in FINAL:
        outcome.lost += 1
        outcome.violate(f"{task_id}: still {status} (attempts {outcomes})")
        return
    outcome.completed += status == "completed"
    outcome.failed += status == "failed"
    outcome.cancelled += status == "cancelled"
    if [a["attempt"] for a in attempts] != list(range(1, task["attempt"] + 1)):
        outcome.violate(
            f"{task_id}: attempt numbers {[a['attempt'] for a in attempts]} "
            f"for attempt={task['attempt']}"
        )
    if "running" in outcomes:
        outcome.violate(f"{task_id}: {status} with an attempt still running: {outcomes}")
    wins = [a for a in attempts if a["outcome"] == "completed"]
    if len(wins) > 1:
        outcome.duplicates += 1
        outcome.violate(f"{task_id}: {len(wins)} results recorded: {outcomes}")
    if status == "completed":
        if not wins:
            outcome.violate(f"{task_id}: completed without a completed attempt: {outcomes}")
        elif task["worker_id"] != wins[-1]["worker_id"]:
            outcome.violate(
                f"{task_id}: result credited to {task['worker_id']} but the completed attempt "
                f"ran on {wins[-1]['worker_id']}"
            )
    elif wins:
        outcome.violate(f"{task_id}: {status} but an attempt completed: {outcomes}")
    elif expect_completed:
        outcome.violate(f"{task_id}: ended {status} ({task.get('error')}): {outcomes}")
    if started > task["attempt"]:
        outcome.overruns += 1
        outcome.violate(
            f"{task_id}: started {started} times in the worker logs, attempt={task['attempt']}"
        )


def attempts_of(task: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    return {a["attempt"]: a for a in (task or {}).get("attempts") or []}


def worker_fault_metrics(
    outcome: Outcome,
    details: dict[str, dict[str, Any]],
    faults: Sequence[Fault],
    *,
    ended_as: str,
) -> None:
    """For attempts cut short by a worker fault: detect = the attempt recorded as ended (as
    `ended_as`: "worker_lost" by the sweeper, "released" by a hand-back) minus the fault time;
    reassign = the next attempt's start minus the fault time. An attempt that still completed
    (it finished just before the fault) is not counted; any other ending is a violation."""
    for fault in faults:
        for task_id, number in fault.held:
            attempts = attempts_of(details.get(task_id))
            cut = attempts.get(number)
            if cut is None:
                outcome.violate(f"{task_id}: attempt {number} held by {fault.target} not recorded")
                continue
            if cut["outcome"] == "completed":
                continue
            if cut["outcome"] != ended_as:
                outcome.violate(
                    f"{task_id}: attempt {number} on {fault.target} ended {cut['outcome']!r}, "
                    f"expected {ended_as!r}"
                )
                continue
            ended = parse_time(cut["ended_at"])
            if ended is not None:
                outcome.detect.append(ended - fault.at)
            following = attempts.get(number + 1)
            started = parse_time(following["started_at"]) if following else None
            if started is not None:
                outcome.reassign.append(started - fault.at)


def first_start_after(
    details: dict[str, dict[str, Any]], moment: float, among: Iterable[str] | None = None
) -> float | None:
    ids = details.keys() if among is None else among
    starts = [
        t
        for task_id in ids
        for a in (details.get(task_id) or {}).get("attempts") or []
        if (t := parse_time(a["started_at"])) is not None and t > moment
    ]
    return min(starts) if starts else None


def check_attempts_survived(
    outcome: Outcome,
    details: dict[str, dict[str, Any]],
    faults: Sequence[Fault],
    why: str,
) -> None:
    """Attempts running when an infrastructure fault hit must end normally: the attempt that
    was running is the one that completed (it kept running and its report was accepted)."""
    seen: set[TaskRef] = set()
    for fault in faults:
        for task_id, number in fault.held:
            cut = attempts_of(details.get(task_id)).get(number)
            if (task_id, number) in seen or cut is None or cut["outcome"] == "completed":
                continue
            seen.add((task_id, number))
            outcome.violate(
                f"{task_id}: attempt {number} on {cut['worker_id']}, running at the {why}, "
                f"ended {cut['outcome']!r} ({cut.get('error')}) instead of completing",
            )


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group `pgid` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone while we looked
            continue
        fields = text[text.rfind(")") + 2 :].split()  # state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_group(proc: Proc) -> bool:
    """SIGKILL the worker's process group (it runs in its own session: that is the worker and
    its process-pool children). True when nothing of the group survived."""
    pid = proc.popen.pid
    proc.kill()
    deadline = time.monotonic() + 5
    while group_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def worker_sigkill(
    env: ChaosEnv,
    rng: random.Random,
    faults: int,
    outcome: Outcome,
    *,
    handlers: Sequence[str] = ("sleep", "cpu"),
) -> None:
    """SIGKILL a worker in the middle of its tasks, `faults` times; each is replaced. The
    sweeper must find the expired leases and hand the tasks to the remaining workers."""
    await env.start_api()
    pool = WorkerPool(env, "k", 3, "--max-concurrent-tasks", "4")
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(faults):
        if injected:
            await env.moved_on(injected[-1].held)
        await env.queue_drained()
        specs = [
            make_task(handlers[(i + j) % len(handlers)], f"kill-{i}-{j}", rng.uniform(1.0, 1.8))
            for j in range(3)
        ]
        accepted |= (await env.submit(specs)).accepted
        victim, held = await pool.busy(rng, max_attempt=MAX_CUTS)
        await asyncio.sleep(rng.uniform(0.2, 0.6))  # let its tasks get well into their run
        held = await pool.running_on(victim) or held
        at = time.time()
        if not await asyncio.to_thread(kill_group, victim):
            outcome.violate(f"{victim.name}: processes of its group survived SIGKILL")
        injected.append(Fault(at, victim.name, held))
        outcome.faults += 1
        pool.replace(victim)
    details = await check_invariants(env, outcome, accepted)
    worker_fault_metrics(outcome, details, injected, ended_as="worker_lost")


async def worker_sigterm(
    env: ChaosEnv,
    rng: random.Random,
    faults: int,
    outcome: Outcome,
    *,
    handlers: Sequence[str] = ("sleep", "cpu"),
) -> None:
    """SIGTERM a worker whose tasks cannot finish within its grace period: it must hand them
    back at once (attempt "released", not "worker_lost" after the lease ran out, nor "error"),
    exit 0 and be listed offline."""
    await env.start_api()
    options = ("--max-concurrent-tasks", "3", "--grace-period", "0.5")
    pool = WorkerPool(env, "t", 3, *options)
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(faults):
        if injected:
            await env.moved_on(injected[-1].held)
        await env.queue_drained()
        specs = [
            make_task(handlers[(i + j) % len(handlers)], f"term-{i}-{j}", rng.uniform(1.6, 2.6))
            for j in range(3)
        ]
        accepted |= (await env.submit(specs)).accepted
        victim, held = await pool.busy(rng)
        await asyncio.sleep(rng.uniform(0.2, 0.5))  # let its tasks get well into their run
        # Alternately to the worker process only (`kill PID`, `docker stop`) and to its whole
        # process group, pool children included (systemd's default; Ctrl-C does the same with
        # SIGINT): the children must leave stopping to the worker, even while they start
        # (bugs B1 and B5).
        held = await pool.running_on(victim) or held
        at = time.time()
        if i % 2:
            victim.signal(signal.SIGTERM)
        else:
            os.kill(victim.popen.pid, signal.SIGTERM)
        code = await victim.wait(timeout=30)
        if code != 0:
            outcome.violate(f"{victim.name}: exit code {code} after SIGTERM")
        workers = (await env.http.get("/api/workers")).json()["workers"]
        if any(w["worker_id"] == victim.name and w["status"] != "offline" for w in workers):
            outcome.violate(f"{victim.name}: still listed as live after a graceful shutdown (B4)")
        injected.append(Fault(at, victim.name, held))
        outcome.faults += 1
        pool.replace(victim)
    details = await check_invariants(env, outcome, accepted)
    worker_fault_metrics(outcome, details, injected, ended_as="released")


async def api_sigkill(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    """SIGKILL the API in the middle of a burst of concurrent submissions, then start it again on
    the same port. Every task answered 2xx must exist and complete; a request that errored may
    or may not have created its task (if it did, the task must complete too)."""
    await env.start_api()
    pool = WorkerPool(env, "a", 2, "--max-concurrent-tasks", "4")
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(faults):
        injected.append(await _burst_and_kill_api(env, rng, i, outcome, accepted))
        outcome.faults += 1
        found = await env.details(accepted)
        for task_id in sorted(accepted - set(found)):
            outcome.violate(f"{task_id}: answered 2xx but missing after the API restart")
    details = await check_invariants(env, outcome, accepted)
    for fault in injected:
        assert fault.detected_at is not None
        outcome.detect.append(fault.detected_at - fault.at)
        resumed = first_start_after(details, fault.at)
        if resumed is not None:
            outcome.reassign.append(resumed - fault.at)


async def _burst_and_kill_api(
    env: ChaosEnv, rng: random.Random, burst: int, outcome: Outcome, accepted: set[str]
) -> Fault:
    """60 concurrent submissions; the API is SIGKILLed when a random number of them (5-30) were
    answered 2xx, with others in flight; then it is started again on the same port."""
    kinds: list[Callable[[str], dict[str, Any]]] = [
        lambda n: {"task_id": n, "task_type": "echo", "payload": {"data": n}},
        lambda n: sleep_task(n, rng.uniform(0.1, 0.5)),
        lambda n: cpu_task(n, 0.05),
    ]
    specs = [kinds[j % 3](f"burst-{burst}-{j}") for j in range(60)]
    threshold = rng.randint(5, 30)
    api = env.processes.api
    assert api is not None
    fault = Fault(at=0.0, target=api.name)
    gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    answered = 0

    async def one(spec: dict[str, Any]) -> None:
        nonlocal answered
        async with gate:
            try:
                answer = await env.http.post("/api/tasks", json=spec)
            except httpx.TransportError:
                return  # the API died under this request: its task may or may not exist
        if answer.status_code in OK:
            accepted.add(spec["task_id"])
            answered += 1
            if answered == threshold:
                fault.at = time.time()
                api.signal(signal.SIGKILL)  # mid-burst: other requests are in flight
        elif answer.status_code != 503:
            outcome.violate(f"{spec['task_id']}: HTTP {answer.status_code} during the burst")

    await asyncio.gather(*(one(s) for s in specs))
    if not fault.at:  # fewer 2xx answers than the threshold: kill it now
        fault.at = time.time()
        api.signal(signal.SIGKILL)
    await asyncio.to_thread(api.popen.wait, 10)
    await env.start_api()
    fault.detected_at = time.time()  # the restarted API answers /health
    return fault


async def _redis_data_loss(
    env: ChaosEnv,
    rng: random.Random,
    faults: int,
    outcome: Outcome,
    lose: Callable[[], Awaitable[None]],
) -> None:
    """Redis loses everything while tasks run and others wait: the API must notice (epoch key
    gone), rebuild queues and leases from the database, and running tasks must keep running
    and report normally (the attempt running at the fault is the one that completes)."""
    name = outcome.scenario
    await env.start_api()
    pool = WorkerPool(env, "r", 2, "--max-concurrent-tasks", "4")
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(faults):
        specs = [sleep_task(f"{name}-{i}-{j}", rng.uniform(0.6, 1.6)) for j in range(12)]
        accepted |= (await env.submit(specs)).accepted
        await pool.busy(rng)
        await asyncio.sleep(rng.uniform(0.1, 0.5))  # tasks in the middle of their run
        held = [ref for refs in (await env.running_by_worker()).values() for ref in refs]
        pending = [t["task_id"] for t in await env.list_tasks(status="pending")]
        fault = Fault(at=time.time(), held=held, pending=pending)
        await lose()
        fault.recovered_at = time.time()
        await eventually(env.epoch_present, timeout=30, what="Redis to be rebuilt", every=0.02)
        fault.detected_at = time.time()
        injected.append(fault)
        outcome.faults += 1
    details = await check_invariants(env, outcome, accepted)
    check_attempts_survived(outcome, details, injected, "Redis data loss")
    for fault in injected:
        assert fault.detected_at is not None
        outcome.detect.append(fault.detected_at - fault.at)
        resumed = first_start_after(details, fault.detected_at, fault.pending)
        if resumed is not None:
            outcome.reassign.append(resumed - fault.at)


async def redis_flushall(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    async def flush() -> None:
        await env.redis.flushall()

    await _redis_data_loss(env, rng, faults, outcome, flush)


async def redis_restart(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    """SIGKILL Valkey (running without persistence) and start it again, empty."""

    async def crash() -> None:
        await asyncio.to_thread(env.valkey.kill)
        await asyncio.sleep(rng.uniform(0.0, 0.5))  # an outage of varying length
        await asyncio.to_thread(env.valkey.start)

    await _redis_data_loss(env, rng, faults, outcome, crash)


async def postgres_restart(
    env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome
) -> None:
    """Stop or kill PostgreSQL under the API, keep it down a while, start it again. Meanwhile
    POST /api/tasks must answer 503 with Retry-After (never 500); workers keep their results and
    retry; nothing is lost, and the attempts running at the outage complete (not re-run).
    detect = fault -> first 503; reassign = database back up -> the API accepts a task again."""
    assert env.postgres is not None, "postgres_restart needs ChaosEnv(postgres=True)"
    await env.start_api()
    pool = WorkerPool(env, "p", 2, "--max-concurrent-tasks", "4")
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(faults):
        specs = [sleep_task(f"pg-{i}-{j}", rng.uniform(0.5, 1.5)) for j in range(10)]
        accepted |= (await env.submit(specs)).accepted
        await pool.busy(rng)
        await asyncio.sleep(rng.uniform(0.1, 0.4))  # tasks in the middle of their run
        fault = await _database_outage(env, rng, i, outcome, accepted)
        injected.append(fault)
        outcome.faults += 1
    details = await check_invariants(env, outcome, accepted)

    check_attempts_survived(outcome, details, injected, "database outage")
    for fault in injected:
        detected, recovered, resumed = fault.detected_at, fault.recovered_at, fault.resumed_at
        assert detected is not None and recovered is not None and resumed is not None
        outcome.detect.append(detected - fault.at)
        outcome.reassign.append(resumed - recovered)


async def _database_outage(
    env: ChaosEnv, rng: random.Random, number: int, outcome: Outcome, accepted: set[str]
) -> Fault:
    """Kill (even numbers) or stop (odd) PostgreSQL; probe POST /api/tasks until it answers 503
    with Retry-After; keep the database down 1.5-3 s; start it; probe until a POST is accepted.
    detected_at = first 503, recovered_at = database started, resumed_at = first 2xx after."""
    postgres = env.postgres
    assert postgres is not None
    held = [ref for refs in (await env.running_by_worker()).values() for ref in refs]
    crash = number % 2 == 0
    fault = Fault(at=time.time(), target="kill" if crash else "stop", held=held)
    await asyncio.to_thread(postgres.kill if crash else postgres.stop)
    probes = iter(range(10**6))

    async def probe(phase: str) -> int | None:
        spec = sleep_task(f"pg-{phase}-{number}-{next(probes)}", 0.1)
        when = {"down": "during", "starting": "while restarting after", "up": "after"}[phase]
        try:
            answer = await env.http.post("/api/tasks", json=spec, timeout=10)
        except httpx.TransportError as exc:
            outcome.violate(f"POST {when} the database outage: {type(exc).__name__}")
            return None
        if answer.status_code in OK:
            accepted.add(spec["task_id"])
        elif answer.status_code != 503:
            outcome.violate(f"POST {when} the database outage: HTTP {answer.status_code}")
        elif not answer.headers.get("retry-after"):
            outcome.violate(f"503 {when} the database outage without Retry-After")
        return answer.status_code

    async def refused() -> bool:
        return await probe("down") == 503

    async def admitted() -> bool:
        return await probe("up") in OK

    await eventually(refused, timeout=20, what="a 503 during the database outage", every=0.05)
    fault.detected_at = time.time()
    # Keep the database down for a while (the fault's duration, not a synchronisation):
    # running tasks finish meanwhile, and their workers must hold and retry the reports.
    await asyncio.sleep(rng.uniform(1.5, 3.0))
    # Submissions keep coming while PostgreSQL starts (and replays its WAL after a kill).
    starting = asyncio.ensure_future(asyncio.to_thread(postgres.start, 60))
    while not starting.done():
        await probe("starting")
        await asyncio.sleep(0.02)
    await starting
    fault.recovered_at = time.time()
    await eventually(admitted, timeout=30, what="the API to accept tasks again", every=0.05)
    fault.resumed_at = time.time()
    return fault


async def worker_sigstop(
    env: ChaosEnv,
    rng: random.Random,
    faults: int,
    outcome: Outcome,
    *,
    handlers: Sequence[str] = ("sleep",),
) -> None:
    """Freeze the worker running a task (SIGSTOP to its whole group) past its lease: the task
    must go to the other worker; then resume it (SIGCONT): its late result must be refused, the
    recorded result is the other worker's, and the attempts read [worker_lost, completed]."""
    await env.start_api()
    pool = WorkerPool(env, "s", 2, "--max-concurrent-tasks", "2")
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(3 * faults):  # bounded: a freeze that misses its task is tried again
        if outcome.faults == faults:
            break
        task_id = f"frozen-{i}"
        spec = make_task(handlers[i % len(handlers)], task_id, rng.uniform(2.0, 2.6))
        accepted |= (await env.submit([spec])).accepted
        fault = await _freeze_and_thaw(env, rng, pool, task_id, outcome)
        if fault is not None:
            injected.append(fault)
            outcome.faults += 1
    details = await check_invariants(env, outcome, accepted)
    worker_fault_metrics(outcome, details, injected, ended_as="worker_lost")
    for fault in injected:
        task_id, number = fault.held[0]
        task = details.get(task_id) or {}
        outcomes = [a["outcome"] for a in task.get("attempts") or []]
        if outcomes[number - 1 :] != ["worker_lost", "completed"]:
            outcome.violate(f"{task_id}: attempts {outcomes}, expected [worker_lost, completed]")
        if task.get("worker_id") == fault.target:
            outcome.violate(f"{task_id}: result from the frozen worker {fault.target}")


async def _freeze_and_thaw(
    env: ChaosEnv, rng: random.Random, pool: WorkerPool, task_id: str, outcome: Outcome
) -> Fault | None:
    """One freeze; None when the task had already finished when the worker froze (then
    nothing was injected: the worker is resumed and the caller tries again)."""

    async def running() -> dict[str, Any] | None:
        task = await env.task(task_id)
        return task if task["status"] == "running" else None

    first = await eventually(running, timeout=30, what=f"{task_id} to start")
    frozen = next(p for p in pool.live if p.name == first["worker_id"])
    await asyncio.sleep(rng.uniform(0.2, 0.5))  # well into its run
    fault = Fault(at=time.time(), target=frozen.name, held=[(task_id, first["attempt"])])
    frozen.signal(signal.SIGSTOP)  # the worker, its lease keeper thread and its pool children
    now = await env.task(task_id)
    if (now["status"], now["attempt"]) != ("running", first["attempt"]):
        frozen.signal(signal.SIGCONT)  # it finished before the freeze: not a fault mid-task
        return None

    async def taken_over() -> dict[str, Any] | None:
        task = await env.task(task_id)
        moved = task["attempt"] > first["attempt"] and task["worker_id"] != frozen.name
        # A report already on its way when the worker froze may still land: a missed freeze.
        missed = task["attempt"] == first["attempt"] and task["status"] in FINAL
        return task if missed or (moved and task["status"] in ("running", "completed")) else None

    try:
        later = await eventually(taken_over, timeout=30, what=f"{task_id} to be reassigned")
    finally:
        frozen.signal(signal.SIGCONT)
    if later["attempt"] == first["attempt"]:
        return None

    async def refused() -> bool:
        events = log_events([frozen.log], "report.refused")
        return any(e.get("task_id") == task_id for e in events)

    try:
        await eventually(refused, timeout=20, what=f"{frozen.name} to log report.refused")
    except AssertionError:
        task = await env.task(task_id)
        if task["status"] == "completed" and task["worker_id"] == frozen.name:
            outcome.violate(f"{task_id}: the frozen worker's late result was applied")
        else:
            outcome.violate(f"{task_id}: no report.refused in {frozen.name}'s log")

    # The next fault must not freeze the worker that runs this task's new attempt: that would
    # be a second fault on the same task, and these checks are about one.
    async def finished() -> bool:
        return (await env.task(task_id))["status"] in FINAL

    await eventually(finished, timeout=30, what=f"{task_id} to finish")
    return fault


# --- network partitions -----------------------------------------------------------------------

# What a partitioned worker is cut off from: the API only, Valkey only, or both (then also what
# this side sends back). Each is a scenario of its own, so the report has figures per kind.
PARTITION_KINDS = ("api", "redis", "full")
# The lease path reassigns a dead or cut-off worker's attempt within LEASE_SECONDS plus one sweep
# (the report has the figures). This bound is what a scenario treats as a violation: three
# leases, room for a loaded 2-CPU machine, far below the database fallback (3 heartbeats or more).
LEASE_BOUND = 3 * LEASE_SECONDS
# A worker cut off from the API alone stops renewing only after a lease without an answer
# (it cannot tell the cut from an outage), so its bound is one lease longer (2 L + S, plus room).
API_CUT_BOUND = LEASE_BOUND + LEASE_SECONDS
REJOIN_TIMEOUT = 90.0  # two HTTP tries of 30 s each, plus TCP's retransmission backoff


async def network_partition(
    env: ChaosEnv,
    rng: random.Random,
    faults: int,
    outcome: Outcome,
    *,
    kinds: Sequence[str] = PARTITION_KINDS,
    bound_api_cut: bool | None = None,
) -> None:
    """A worker in its own network namespace is cut off (packets silently dropped) from the API,
    from Valkey, or from both, while it runs tasks; the partition heals after 2-3 leases. Two
    workers on this side (`sleep` and `cpu` only) take over. The cut-off worker's attempts must be
    reassigned within LEASE_BOUND and its late reports refused; after the heal it must rejoin:
    an `echo` task (a type only it runs) completes on it. detect = cut -> attempt recorded
    worker_lost; reassign = cut -> next attempt started; rejoin = heal -> the echo task started.
    `bound_api_cut`: check the bound for "api" cuts too (default: unless P1 is a known bug)."""
    if bound_api_cut is None:
        bound_api_cut = "P1" not in KNOWN_BUGS
    assert env.network is not None, "network_partition needs ChaosEnv(namespaces=1)"
    ns = env.network.namespaces[0]
    await env.start_api()
    pool = WorkerPool(env, "n", 2, "--max-concurrent-tasks", "3", "--capabilities", "sleep,cpu")
    await pool.start()
    victim = env.start_worker("cut", "--max-concurrent-tasks", "3", netns=ns)
    await env.processes.wait_for_workers(victim.name)
    accepted: set[str] = set()
    injected: list[Fault] = []
    bounded: list[Fault] = []  # those whose attempts must move within LEASE_BOUND
    for i in range(faults):
        if injected:
            await env.moved_on(injected[-1].held, timeout=REJOIN_TIMEOUT)
        await env.queue_drained()
        kind = kinds[i % len(kinds)]
        check = kind != "api" or bound_api_cut
        fault = await _partition_once(
            env, rng, ns, victim, f"{kind}-{i}", outcome, accepted, bounded=check
        )
        injected.append(fault)
        bounded += [fault] if check else []
        outcome.faults += 1
    details = await check_invariants(env, outcome, accepted)
    worker_fault_metrics(outcome, details, bounded, ended_as="worker_lost")
    for fault in injected:
        if fault.resumed_at is not None and fault.recovered_at is not None:
            outcome.rejoin.append(fault.resumed_at - fault.recovered_at)


async def _partition_once(
    env: ChaosEnv,
    rng: random.Random,
    ns: system.Namespace,
    victim: Proc,
    label: str,
    outcome: Outcome,
    accepted: set[str],
    *,
    bounded: bool,
) -> Fault:
    """One cut of kind label's prefix ("api", "redis", "full"), held 2-3 leases, then healed."""
    kind = label.split("-")[0]
    held = await _keep_busy(env, rng, victim.name, label, accepted)
    await asyncio.sleep(rng.uniform(0.2, 0.5))  # well into their run
    held = await env.running_by_worker_named(victim.name) or held
    fault = Fault(at=time.time(), target=victim.name, held=held)
    await asyncio.to_thread(ns.cut, api=kind in ("api", "full"), redis=kind in ("redis", "full"))
    try:
        if bounded:
            await _reassigned_within_bound(env, fault, kind, outcome)
        # The partition lasts a few leases (the fault's length, not a synchronisation).
        await asyncio.sleep(max(0.0, fault.at + rng.uniform(2, 3) * LEASE_SECONDS - time.time()))
    finally:
        await asyncio.to_thread(ns.heal)
    fault.recovered_at = time.time()
    fault.resumed_at = await _rejoined(env, victim.name, label, outcome, accepted)
    return fault


async def _keep_busy(
    env: ChaosEnv, rng: random.Random, worker: str, label: str, accepted: set[str]
) -> list[TaskRef]:
    """Submit batches of tasks until `worker` runs some (the other workers take their share)."""
    for batch in range(10):
        specs = [
            make_task(
                "sleep" if j % 3 else "cpu", f"part-{label}-{batch}-{j}", rng.uniform(1.5, 2.5)
            )
            for j in range(6)
        ]
        accepted |= (await env.submit(specs)).accepted

        async def busy() -> list[TaskRef]:
            return await env.running_by_worker_named(worker)

        with contextlib.suppress(AssertionError):
            found: list[TaskRef] = await eventually(busy, timeout=5, what=f"{worker} to run tasks")
            return found
        await env.queue_drained()
    raise AssertionError(f"{worker} took none of 60 tasks")


async def _reassigned_within_bound(
    env: ChaosEnv, fault: Fault, kind: str, outcome: Outcome
) -> None:
    """The cut-off worker's attempts must have moved on (ended, and started again or finished)
    within LEASE_BOUND of the cut (API_CUT_BOUND for a cut from the API); a violation otherwise."""

    async def moved() -> bool:
        tasks = await env.details(t for t, _ in fault.held)
        return all(tasks[t]["attempt"] > n or tasks[t]["status"] in FINAL for t, n in fault.held)

    bound = API_CUT_BOUND if kind == "api" else LEASE_BOUND
    try:
        await eventually(moved, timeout=bound, what="the cut-off worker's tasks to move")
        fault.detected_at = time.time()
    except AssertionError:
        tasks = await env.details(t for t, _ in fault.held)
        stuck = {t: (tasks[t]["status"], tasks[t]["worker_id"]) for t, _ in fault.held}
        outcome.violate(
            f"{kind} cut of {fault.target}: its attempts {fault.held} not reassigned "
            f"{bound:.0f}s after the cut: {stuck}"
        )


async def _rejoined(
    env: ChaosEnv, worker: str, label: str, outcome: Outcome, accepted: set[str]
) -> float | None:
    """After the heal the worker must run tasks again: an `echo` task, which only it can run,
    must complete on it. Returns when that attempt started (None: it did not rejoin)."""
    task_id = f"rejoin-{label}"
    accepted |= (await env.submit([{"task_id": task_id, "task_type": "echo"}])).accepted

    async def done() -> dict[str, Any] | None:
        task = await env.task(task_id)
        return task if task["status"] in FINAL else None

    try:
        task = await eventually(done, timeout=REJOIN_TIMEOUT, what=f"{worker} to rejoin")
    except AssertionError:
        outcome.violate(f"{worker} did not rejoin within {REJOIN_TIMEOUT:.0f}s of the heal")
        return None
    if task["status"] != "completed" or task["worker_id"] != worker:
        outcome.violate(f"{task_id}: {task['status']} on {task['worker_id']}, not run by {worker}")

    async def listed() -> bool:  # its heartbeats may still be in a request the cut made hang
        return any(
            w["worker_id"] == worker and w["status"] != "offline" for w in await env.workers()
        )

    try:
        await eventually(listed, timeout=REJOIN_TIMEOUT, what=f"{worker} to be listed again")
    except AssertionError:
        outcome.violate(f"{worker}: runs tasks again but still listed offline after the heal")
    started = attempts_of(task).get(task["attempt"], {}).get("started_at")
    return parse_time(started)


# --- clock skew -----------------------------------------------------------------------------

CLOCK_SKEWS = (30, -30)  # seconds each worker's wall clock is off, in turn


async def clock_skew(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    """Workers whose wall clocks are 30 s ahead and 30 s behind (libfaketime; the API, Valkey
    and the database keep the true time) run tasks, some delayed; a skewed worker is SIGKILLed
    mid-task, `faults` times. Leases are timed by Valkey's clock (TIME in the Lua scripts), so
    nothing may depend on the workers' clocks: every task completes, no attempt of a live worker
    is taken for lost (a lease expiring early), a killed worker's attempts are reassigned
    within LEASE_BOUND (not late), and the recorded times are the scheduler's: no attempt starts
    before its task was created or was due. detect/reassign as for worker_sigkill."""
    await env.start_api()
    # Slots to spare: the survivors take the killed worker's tasks at once, so "reassign"
    # measures the lease, not a wait for a slot.
    pool = WorkerPool(env, "c", 3, "--max-concurrent-tasks", "6", skews=CLOCK_SKEWS)
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(faults):
        if injected:
            await env.moved_on(injected[-1].held)
        await env.queue_drained()
        specs = [sleep_task(f"skew-{i}-{j}", rng.uniform(1.0, 1.8)) for j in range(4)]
        specs += [
            sleep_task(f"skew-{i}-later-{j}", 0.3, delay_seconds=rng.uniform(0.5, 2))
            for j in range(2)
        ]
        accepted |= (await env.submit(specs)).accepted
        victim, held = await pool.busy(rng, max_attempt=MAX_CUTS)
        await asyncio.sleep(rng.uniform(0.2, 0.6))
        held = await pool.running_on(victim) or held
        at = time.time()
        if not await asyncio.to_thread(kill_group, victim):
            outcome.violate(f"{victim.name}: processes of its group survived SIGKILL")
        injected.append(Fault(at, victim.name, held))
        outcome.faults += 1
        pool.replace(victim)
    details = await check_invariants(env, outcome, accepted)
    worker_fault_metrics(outcome, details, injected, ended_as="worker_lost")
    check_detection_bound(outcome)
    killed = {f.target for f in injected}
    for task_id, task in sorted(details.items()):
        for attempt in task.get("attempts") or []:
            if attempt["outcome"] == "worker_lost" and attempt["worker_id"] not in killed:
                outcome.violate(
                    f"{task_id}: attempt {attempt['attempt']} on {attempt['worker_id']} (alive, "
                    "clock skewed) taken for lost: its lease expired early"
                )
        check_recorded_times(outcome, task)


def check_recorded_times(outcome: Outcome, task: dict[str, Any]) -> None:
    """Times the scheduler records must come from one clock: an attempt cannot start before its
    task was created or due, nor end before it started (a small allowance for rounding)."""
    attempts = task.get("attempts") or []
    # scheduled_at is the submission's until a retry moves it to the retry's time.
    due = parse_time(task.get("scheduled_at")) if len(attempts) == 1 else None
    created = parse_time(task["created_at"])
    for attempt in attempts:
        started, ended = parse_time(attempt["started_at"]), parse_time(attempt["ended_at"])
        wrong = [
            what
            for what, early, late in (
                ("started before its task was created", created, started),
                ("started before its task was due", due, started),
                ("ended before it started", started, ended),
            )
            if early is not None and late is not None and late < early - 0.05
        ]
        for what in wrong:
            outcome.violate(
                f"{task['task_id']}: attempt {attempt['attempt']} on {attempt['worker_id']} "
                f"recorded as {what} (a worker's clock used as the scheduler's)"
            )


def check_detection_bound(outcome: Outcome) -> None:
    for seconds in outcome.detect:
        if seconds > LEASE_BOUND:
            outcome.violate(f"a lost attempt was detected {seconds:.1f}s after the fault")


# --- a poison task ----------------------------------------------------------------------------

CHAOS_TASKS = "tests.chaos.chaos_tasks"  # the test-only task types (--tasks)


def worker_loss_cap(env: ChaosEnv) -> int:
    """Attempts a task may lose to vanished workers before it fails, as the API applies it: its
    MAX_WORKER_LOSSES setting, else the setting's default in the code."""
    configured = env.env.get("MAX_WORKER_LOSSES")
    if configured is not None:
        return int(configured)
    default = Settings.model_fields["max_worker_losses"].default
    assert isinstance(default, int)
    return default


async def poison_task(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    """A `chaos_poison` task SIGKILLs the worker that runs it, every time (`faults` kills in
    all: one poison task per loss cap + 1 kills), among ordinary tasks on 3 one-slot workers,
    which the scenario restarts as they die. The poison must end failed, every attempt
    worker_lost, after at most max_retries + the loss cap + 1 attempts; every other task must
    complete without losing an attempt (one slot per worker: nothing shares the poison's
    worker). detect = poison attempt started -> recorded worker_lost (the kill comes at its
    start); reassign = started -> its next attempt started."""
    await env.start_api()
    pool = WorkerPool(env, "x", 3, "--max-concurrent-tasks", "1", "--tasks", CHAOS_TASKS)
    await pool.start()
    cap = worker_loss_cap(env)
    accepted: set[str] = set()
    poisons: list[str] = []
    while outcome.faults < faults:
        poison = f"poison-{len(poisons)}"
        poisons.append(poison)
        specs = [sleep_task(f"{poison}-other-{j}", rng.uniform(0.3, 1.0)) for j in range(6)]
        specs.insert(
            rng.randrange(len(specs)),
            {"task_id": poison, "task_type": "chaos_poison", "max_retries": 1},
        )
        accepted |= (await env.submit(specs)).accepted
        outcome.faults += await _restart_until_final(env, pool, poison)
    details = await check_invariants(env, outcome, accepted, expect_completed=False)
    for task_id, task in sorted(details.items()):
        if task_id in poisons:
            _check_poison(outcome, task, cap)
        elif task["status"] != "completed" or len(task.get("attempts") or []) != 1:
            outcomes = [a["outcome"] for a in task.get("attempts") or []]
            outcome.violate(f"{task_id}: {task['status']} after {outcomes}, next to a poison task")


async def _restart_until_final(env: ChaosEnv, pool: WorkerPool, task_id: str) -> int:
    """Replace dead workers until the task is final; returns how many died."""
    deaths = 0

    async def final() -> bool:
        nonlocal deaths
        for proc in [p for p in pool.live if p.popen.poll() is not None]:
            deaths += 1
            pool.replace(proc)
        return (await env.task(task_id))["status"] in FINAL

    await eventually(final, timeout=SETTLE_TIMEOUT, what=f"{task_id} to end", every=0.1)
    return deaths


def _check_poison(outcome: Outcome, task: dict[str, Any], cap: int) -> None:
    attempts = task.get("attempts") or []
    outcomes = [a["outcome"] for a in attempts]
    bound = task["max_retries"] + cap + 1
    if task["status"] != "failed" or set(outcomes) != {"worker_lost"} or len(attempts) > bound:
        outcome.violate(
            f"{task['task_id']}: {task['status']} after {outcomes}; expected failed after at "
            f"most {bound} attempts, all worker_lost"
        )
    for previous, following in itertools.pairwise([*attempts, None]):
        started, ended = parse_time(previous["started_at"]), parse_time(previous["ended_at"])
        if started is None or ended is None:
            continue
        outcome.detect.append(ended - started)
        again = parse_time(following["started_at"]) if following else None
        if again is not None:
            outcome.reassign.append(again - started)


# --- the database slow, the disk full -----------------------------------------------------------

LOCK_SECONDS = 10.0
PROBE_TIMEOUT = 3.0  # a client's patience with one submission during a stall


async def database_lock(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    """A session takes `LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE` and holds it for 10 s while
    tasks run and more are submitted. A submission meanwhile may wait (a client timeout) or get
    503 with Retry-After, never another error; afterwards nothing is lost and the attempts
    running at the stall complete. detect = lock taken -> first submission refused or timed
    out; reassign = lock released -> the API accepts a task again."""
    assert env.postgres is not None, "database_lock needs ChaosEnv(postgres=True)"
    await database_stalls(env, rng, faults, outcome, lambda: (_table_locked(env), LOCK_SECONDS))


@contextlib.asynccontextmanager
async def _table_locked(env: ChaosEnv) -> AsyncIterator[None]:
    """Hold ACCESS EXCLUSIVE on the tasks table (from another connection) while entered."""
    assert env.postgres is not None
    conn = await asyncpg.connect(env.postgres.database_url("chaos"))
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def sqlite_disk_full(
    env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome
) -> None:
    """The file system of the SQLite file (a 32 MB tmpfs) fills up while tasks run and more are
    submitted, for 1.5-3 s, then has room again. Meanwhile: 503 with Retry-After or a client
    timeout, never another error; afterwards nothing is lost and the attempts running at the
    fault complete. detect = disk full -> first submission refused; reassign = room again ->
    the API accepts a task again."""
    assert env.disk is not None, "sqlite_disk_full needs ChaosEnv(small_disk=True)"
    await database_stalls(env, rng, faults, outcome, lambda: (_disk_full(env), rng.uniform(1.5, 3)))


@contextlib.asynccontextmanager
async def _disk_full(env: ChaosEnv) -> AsyncIterator[None]:
    """Fill the small disk while entered."""
    assert env.disk is not None
    await asyncio.to_thread(env.disk.fill)
    try:
        yield
    finally:
        await asyncio.to_thread(env.disk.free)


StallFactory = Callable[[], tuple[contextlib.AbstractAsyncContextManager[None], float]]


async def database_stalls(
    env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome, stall: StallFactory
) -> None:
    """`faults` times: tasks run, then the database cannot write while `stall()` (a context
    manager, and for how many seconds to hold it) is entered; see Stall."""
    await env.start_api()
    pool = WorkerPool(env, "d", 2, "--max-concurrent-tasks", "4")
    await pool.start()
    accepted: set[str] = set()
    injected: list[Fault] = []
    for i in range(faults):
        label = f"{outcome.scenario}-{i}"
        specs = [sleep_task(f"{label}-{j}", rng.uniform(0.5, 1.5)) for j in range(10)]
        accepted |= (await env.submit(specs)).accepted
        await pool.busy(rng)
        await asyncio.sleep(rng.uniform(0.1, 0.4))  # tasks in the middle of their run
        held = [ref for refs in (await env.running_by_worker()).values() for ref in refs]
        fault = Fault(at=time.time(), target=outcome.scenario, held=held)
        during, hold = stall()
        await Stall(env, label, outcome, accepted).run(fault, during, hold)
        injected.append(fault)
        outcome.faults += 1
    details = await check_invariants(env, outcome, accepted)
    check_attempts_survived(outcome, details, injected, "database stall")
    stall_metrics(outcome, injected)


class Stall:
    """Submissions while the database cannot write, probed one after the other: each must be
    accepted, refused with 503 + Retry-After, or time out on the client's side (PROBE_TIMEOUT);
    anything else is a violation. A timed-out submission may still have been admitted later:
    check_invariants then holds it to the same rules as the rest."""

    def __init__(self, env: ChaosEnv, label: str, outcome: Outcome, accepted: set[str]) -> None:
        self.env, self.label, self.outcome, self.accepted = env, label, outcome, accepted
        self.sent = 0

    async def probe(self, when: str) -> int | str:
        spec = sleep_task(f"{self.label}-probe-{self.sent}", 0.1)
        self.sent += 1
        try:
            answer = await self.env.http.post("/api/tasks", json=spec, timeout=PROBE_TIMEOUT)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.TransportError as exc:
            self.outcome.violate(f"POST {when}: {type(exc).__name__}")
            return type(exc).__name__
        if answer.status_code in OK:
            self.accepted.add(spec["task_id"])
        elif answer.status_code != 503:
            self.outcome.violate(f"POST {when}: HTTP {answer.status_code} {answer.text[:200]}")
        elif not answer.headers.get("retry-after"):
            self.outcome.violate(f"503 {when} without Retry-After")
        return answer.status_code

    async def run(
        self, fault: Fault, stall: contextlib.AbstractAsyncContextManager[None], hold: float
    ) -> Fault:
        """Probe for `hold` seconds of the stall (`stall` holds it while entered), then until
        one is accepted. detected_at = first refusal or timeout; recovered_at = the stall ended;
        resumed_at = first acceptance after it."""
        async with stall:
            ends = time.monotonic() + hold
            while time.monotonic() < ends:
                answer = await self.probe(f"during the {self.label} stall")
                if answer not in OK and fault.detected_at is None:
                    fault.detected_at = time.time()
                await asyncio.sleep(0.1)
        fault.recovered_at = time.time()

        async def admitted() -> bool:
            return await self.probe(f"after the {self.label} stall") in OK

        await eventually(admitted, timeout=60, what="the API to accept tasks again", every=0.05)
        fault.resumed_at = time.time()
        return fault


def stall_metrics(outcome: Outcome, faults: Sequence[Fault]) -> None:
    for fault in faults:
        if fault.detected_at is None:
            outcome.violate(
                f"{fault.target}: every submission during the stall was accepted at once"
            )
        else:
            outcome.detect.append(fault.detected_at - fault.at)
        if fault.resumed_at is not None and fault.recovered_at is not None:
            outcome.reassign.append(fault.resumed_at - fault.recovered_at)


# --- results the database cannot store -----------------------------------------------------------

BAD_RESULTS = ("chaos_nul", "chaos_big")


async def bad_results(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    """Tasks whose result PostgreSQL cannot store (text with a NUL character) or that is over the
    size cap (2 MiB, or MAX_RESULT_BYTES + 1 KiB if set), each submitted with ordinary tasks
    that run on the same workers and report in the same exchanges. The bad task must end
    `failed` with an error that says why, every attempt an `error` (its report was refused
    clearly, not dropped with the worker's other reports so that the attempt ran out its lease),
    within max_retries + 1 attempts; every ordinary task completes. detect = first bad attempt
    started -> ended; reassign: none."""
    await env.start_api()
    pool = WorkerPool(env, "b", 2, "--max-concurrent-tasks", "6", "--tasks", CHAOS_TASKS)
    await pool.start()
    accepted: set[str] = set()
    bad: list[str] = []
    for i in range(faults):
        kind = BAD_RESULTS[i % len(BAD_RESULTS)]
        task_id = f"bad-{i}-{kind}"
        bad.append(task_id)
        size = int(env.env.get("MAX_RESULT_BYTES", 2 * 1024 * 1024 - 1024)) + 1024
        specs = [sleep_task(f"bad-{i}-other-{j}", rng.uniform(0.05, 0.3)) for j in range(6)]
        specs.insert(
            rng.randrange(len(specs)),
            {"task_id": task_id, "task_type": kind, "payload": {"parameters": {"bytes": size}}},
        )
        accepted |= (await env.submit(specs)).accepted
        outcome.faults += 1
    details = await check_invariants(env, outcome, accepted, expect_completed=False)
    for task_id, task in sorted(details.items()):
        attempts = task.get("attempts") or []
        outcomes = [a["outcome"] for a in attempts]
        if task_id not in bad:
            if task["status"] != "completed":
                outcome.violate(f"{task_id}: {task['status']} {outcomes} (next to a bad result)")
        elif (
            task["status"] != "failed"
            or not task.get("error")
            or set(outcomes) != {"error"}
            or len(attempts) > task["max_retries"] + 1
        ):
            outcome.violate(
                f"{task_id}: {task['status']} after {outcomes} ({task.get('error')!r}); expected "
                "failed with a clear error, every attempt an error (its report was not dropped)"
            )
        elif (ended := parse_time(attempts[0]["ended_at"])) is not None:
            started = parse_time(attempts[0]["started_at"])
            outcome.detect.append(ended - (started or ended))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

Runner = Callable[[ChaosEnv, random.Random, int, Outcome], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Runner
    faults_per_run: int  # in the long runner
    postgres: bool = False
    appendonly: bool = False
    detect_means: str = ""
    reassign_means: str = ""
    namespaces: int = 0  # network namespaces (ChaosEnv)
    small_disk: bool = False  # the SQLite file on a small tmpfs (ChaosEnv)
    env: dict[str, str] = field(default_factory=dict)  # settings on top of API_ENV
    # Why the scenario cannot run on this machine (None: it can), e.g. not root.
    unavailable: Callable[[], str | None] = lambda: None


def _kill(handlers: tuple[str, ...]) -> Runner:
    async def run(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
        await worker_sigkill(env, rng, faults, outcome, handlers=handlers)

    return run


async def _sigstop_both(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
    await worker_sigstop(env, rng, faults, outcome, handlers=("sleep", "cpu"))


def _partition(*kinds: str) -> Runner:
    async def run(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
        await network_partition(env, rng, faults, outcome, kinds=kinds)

    return run


LEASE_DETECT = "fault -> attempt recorded worker_lost by the sweeper"
PARTITION_DETECT = "cut -> the cut-off worker's attempt recorded worker_lost by the sweeper"
PARTITION_REASSIGN = (
    "cut -> next attempt started on a worker on this side (rejoin: heal -> the cut-off worker "
    "runs a task again)"
)
NEXT_START = "fault -> next attempt of that task started on another worker"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "worker_sigkill_sleep", _kill(("sleep",)), 13,
            detect_means=LEASE_DETECT, reassign_means=NEXT_START,
        ),
        Scenario(
            "worker_sigkill_cpu", _kill(("cpu",)), 13,
            detect_means=LEASE_DETECT, reassign_means=NEXT_START,
        ),
        Scenario(
            "worker_sigterm", worker_sigterm, 13,
            detect_means="SIGTERM -> attempt recorded released (hand-back)",
            reassign_means=NEXT_START,
        ),
        Scenario(
            "worker_sigstop", _sigstop_both, 9,
            detect_means=LEASE_DETECT, reassign_means=NEXT_START,
        ),
        Scenario(
            "api_sigkill", api_sigkill, 9,
            detect_means="SIGKILL -> restarted API healthy (includes its start-up, ~1-2 s)",
            reassign_means="SIGKILL -> first attempt started after it",
        ),
        Scenario(
            "redis_flushall", redis_flushall, 13,
            detect_means="FLUSHALL -> epoch key rebuilt (queues and leases restored)",
            reassign_means="FLUSHALL -> first start of a task that was queued at the fault",
        ),
        Scenario(
            "redis_sigkill_restart", redis_restart, 13,
            detect_means="SIGKILL -> epoch key rebuilt (includes a 0-0.5 s outage)",
            reassign_means="SIGKILL -> first start of a task that was queued at the fault",
        ),
        Scenario(
            "postgres_restart", postgres_restart, 9, postgres=True,
            detect_means="kill/stop -> first 503 with Retry-After",
            reassign_means="database back up -> the API accepts a task again",
        ),
        Scenario(
            "clock_skew", clock_skew, 9,
            detect_means=LEASE_DETECT + " (of a worker whose clock is 30 s off)",
            reassign_means=NEXT_START,
            unavailable=system.faketime_unavailable,
        ),
        Scenario(
            "poison_task", poison_task, 12,
            detect_means="poison attempt started (it kills its worker at once) -> recorded "
            "worker_lost",
            reassign_means="poison attempt started -> its next attempt started",
        ),
        Scenario(
            "postgres_table_lock", database_lock, 6, postgres=True,
            detect_means="ACCESS EXCLUSIVE lock taken -> first submission refused (503) or "
            "timed out (3 s)",
            reassign_means=f"lock released ({LOCK_SECONDS:.0f} s later) -> the API accepts a "
            "task again",
        ),
        Scenario(
            "sqlite_disk_full", sqlite_disk_full, 6, small_disk=True,
            detect_means="file system full -> first submission refused (503) or timed out",
            reassign_means="room again -> the API accepts a task again",
            unavailable=system.tmpfs_unavailable,
        ),
        Scenario(
            "postgres_bad_results", bad_results, 6, postgres=True,
            detect_means="attempt with a NUL or oversized result started -> ended (error)",
            reassign_means="none (such a task is not run again)",
        ),
        *(
            Scenario(
                f"partition_worker_{kind}", _partition(kind), 6, namespaces=1,
                detect_means=PARTITION_DETECT, reassign_means=PARTITION_REASSIGN,
                unavailable=system.netns_unavailable,
            )
            for kind in PARTITION_KINDS
        ),
    )
}  # fmt: skip


async def run_scenario(
    scenario: str | Scenario,
    tmp: Path,
    faults: int,
    *,
    seed: int = 0,
    keep_logs: list[str] | None = None,
    capture_errors: bool = False,
) -> Outcome:
    """Run one scenario (a name from SCENARIOS, or a Scenario) in a fresh world under `tmp`.
    `keep_logs` receives the processes' log tails when it fails. An exception propagates, unless
    `capture_errors`: then it is recorded in the outcome (`error` and a violation), which keeps
    what was counted before it (the long runner wants both)."""
    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    outcome = Outcome(scenario.name)
    started = time.monotonic()
    env = ChaosEnv(
        tmp,
        postgres=scenario.postgres,
        appendonly=scenario.appendonly,
        namespaces=scenario.namespaces,
        small_disk=scenario.small_disk,
        env=scenario.env,
    )
    try:
        async with env:
            try:
                await scenario.run(env, random.Random(seed), faults, outcome)
            except BaseException:
                if keep_logs is not None:
                    keep_logs.append(env.logs())
                raise
            if outcome.violations and keep_logs is not None:
                keep_logs.append(env.logs())
    except Exception as exc:
        if not capture_errors:
            raise
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.violate(f"scenario aborted: {outcome.error}")
    finally:
        outcome.seconds = time.monotonic() - started
    return outcome


# The short suite kills workers running both kinds of handler at once (one test instead of two).
WORKER_SIGKILL_MIXED = Scenario(
    "worker_sigkill_sleep_cpu",
    _kill(("sleep", "cpu")),
    8,
    detect_means=LEASE_DETECT,
    reassign_means=NEXT_START,
)
