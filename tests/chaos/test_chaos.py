"""The chaos suite, short version: each scenario of scenarios.py with a few faults, on real
processes and private servers. `check_invariants` (run by every scenario) asserts that every
accepted task ends final with exactly one result and never ran more often than its attempts say.

The long version: `python -m tests.chaos.run_long --faults 1000 --report docs/chaos_report.md`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import struct
import time
from pathlib import Path

import pytest

from app.services.message_queue import RedisQueue
from tests.chaos.scenarios import (
    API_CUT_BOUND,
    LEASE_BOUND,
    LEASE_SECONDS,
    SCENARIOS,
    WORKER_SIGKILL_MIXED,
    ChaosEnv,
    Outcome,
    Scenario,
    check_invariants,
    check_recorded_times,
    cpu_task,
    network_partition,
    run_scenario,
    sleep_task,
)
from tests.integration.harness import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


def assert_recovered(outcome: Outcome, faults: int) -> None:
    outcome.assert_ok()
    assert outcome.faults == faults
    assert outcome.accepted > 0
    assert outcome.lost == outcome.duplicates == outcome.overruns == 0


async def test_worker_sigkill_mid_task_async_and_process_handlers(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """Three workers SIGKILLed (with their process-pool children) while running `sleep` and
    `cpu` tasks: the sweeper reassigns every cut attempt within a few leases."""
    outcome = await run_scenario(WORKER_SIGKILL_MIXED, tmp_path, 3, seed=11, keep_logs=chaos_logs)
    assert_recovered(outcome, 3)
    assert outcome.detect, "no kill landed in the middle of a task"
    assert max(outcome.detect) < 3 * LEASE_SECONDS
    # Reassignment waits for a free slot too: on 2 busy cores the CPU-aware claim budget
    # halves the slots (the long run saw 11 s once in 25 kills of `cpu` tasks).
    assert max(outcome.reassign) < 15


async def test_worker_sigterm_hands_unfinished_tasks_back_at_once(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    outcome = await run_scenario("worker_sigterm", tmp_path, 2, seed=12, keep_logs=chaos_logs)
    assert_recovered(outcome, 2)
    assert outcome.detect, "no SIGTERM landed in the middle of a task"
    # Handed back after the 0.5 s grace period ("released", checked by the scenario), not by
    # the sweeper; the bound only leaves room for a loaded machine.
    assert max(outcome.detect) < 2 * LEASE_SECONDS


async def test_api_sigkill_during_a_submission_burst(tmp_path: Path, chaos_logs: list[str]) -> None:
    outcome = await run_scenario("api_sigkill", tmp_path, 1, seed=13, keep_logs=chaos_logs)
    assert_recovered(outcome, 1)


async def test_redis_flushall_mid_run(tmp_path: Path, chaos_logs: list[str]) -> None:
    outcome = await run_scenario("redis_flushall", tmp_path, 2, seed=14, keep_logs=chaos_logs)
    assert_recovered(outcome, 2)
    assert max(outcome.detect) < 5


async def test_redis_sigkill_and_restart_without_persistence(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    outcome = await run_scenario(
        "redis_sigkill_restart", tmp_path, 2, seed=15, keep_logs=chaos_logs
    )
    assert_recovered(outcome, 2)
    assert max(outcome.detect) < 5


async def test_postgres_restart_mid_run(tmp_path: Path, chaos_logs: list[str]) -> None:
    """PostgreSQL killed under the API: 503 + Retry-After meanwhile, nothing lost after."""
    outcome = await run_scenario("postgres_restart", tmp_path, 1, seed=16, keep_logs=chaos_logs)
    assert_recovered(outcome, 1)


async def test_worker_frozen_past_its_lease_is_fenced_off(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """SIGSTOP past the lease, SIGCONT after the task moved: the late result is refused."""
    outcome = await run_scenario("worker_sigstop", tmp_path, 1, seed=17, keep_logs=chaos_logs)
    assert_recovered(outcome, 1)


# --------------------------------------------------------------------------------------------
# Faults of the machine: partitions, clocks, a poison task, a stalled or full database, results
# the database cannot store.
# --------------------------------------------------------------------------------------------


def available(scenario: Scenario) -> Scenario:
    """Skip when this machine cannot inject the scenario's fault (root, ip netns, libfaketime)."""
    reason = scenario.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return scenario


def partitions(*kinds: str, bound_api_cut: bool | None = None) -> Scenario:
    async def run(env: ChaosEnv, rng: random.Random, faults: int, outcome: Outcome) -> None:
        await network_partition(env, rng, faults, outcome, kinds=kinds, bound_api_cut=bound_api_cut)

    base = SCENARIOS[f"partition_worker_{kinds[0]}"]
    return dataclasses.replace(base, name=f"partition_worker_{'_'.join(kinds)}", run=run)


async def test_worker_cut_off_from_redis_or_entirely_is_replaced_and_rejoins(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """A worker in its own network namespace loses Valkey (its leases lapse), then everything,
    for 2-3 leases each: its attempts go to the other workers within the lease bound, its late
    reports are refused, and after each heal it runs tasks again."""
    scenario = available(partitions("redis", "full"))
    outcome = await run_scenario(scenario, tmp_path, 2, seed=21, keep_logs=chaos_logs)
    assert_recovered(outcome, 2)
    assert outcome.detect, "no cut landed in the middle of a task"
    assert max(outcome.detect) < LEASE_BOUND
    assert len(outcome.rejoin) == 2


async def test_worker_cut_off_from_the_api_has_its_tasks_reassigned(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """P1, found by partition_worker_api (fixed): a worker that reaches Valkey but not the API
    kept its attempt's lease alive, so the attempt was never reassigned while the partition
    lasted. Now it lets its leases lapse once the scheduler has not answered for a lease."""
    available(SCENARIOS["partition_worker_api"])
    async with ChaosEnv(tmp_path, namespaces=1) as env:
        assert env.network is not None
        ns = env.network.namespaces[0]
        try:
            await env.start_api()
            env.start_worker("cut", netns=ns)
            await env.processes.wait_for_workers("cut")
            await env.submit([sleep_task("t", 60)])

            async def on(worker: str) -> bool:
                task = await env.task("t")
                return bool(task["status"] == "running" and task["worker_id"] == worker)

            await eventually(lambda: on("cut"), timeout=30, what="t to start on cut")
            env.start_worker("rescuer", "--capabilities", "sleep")
            await env.processes.wait_for_workers("rescuer")
            ns.cut(api=True, redis=False)
            await eventually(lambda: on("rescuer"), timeout=API_CUT_BOUND, what="t to move")
        except BaseException:
            chaos_logs.append(env.logs())
            raise
        finally:
            ns.heal()


async def test_workers_with_skewed_clocks(tmp_path: Path, chaos_logs: list[str]) -> None:
    """Clocks 30 s ahead and behind: no lease lapses early, a killed worker's lapse on time."""
    scenario = available(SCENARIOS["clock_skew"])
    outcome = await run_scenario(scenario, tmp_path, 1, seed=23, keep_logs=chaos_logs)
    assert_recovered(outcome, 1)
    assert outcome.detect and max(outcome.detect) < LEASE_BOUND


async def test_a_worker_running_its_own_transitions_records_the_schedulers_time(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """P2 (fixed): a worker 30 s behind with --database-url recorded its attempt as started
    before the task was created (the scheduler's clock was its own); now it uses the database
    server's."""
    available(SCENARIOS["clock_skew"])
    async with ChaosEnv(tmp_path, postgres=True) as env:
        assert env.postgres is not None
        try:
            await env.start_api()
            database_url = env.postgres.database_url("chaos")
            env.start_worker("behind", "--database-url", database_url, skew=-30)
            await env.processes.wait_for_workers("behind")
            accepted = (await env.submit([sleep_task("t", 0.1)])).accepted
            outcome = Outcome("clock_skew_in_worker")
            await check_invariants(env, outcome, accepted, timeout=30)
            check_recorded_times(outcome, await env.task("t"))
            outcome.assert_ok()
        except BaseException:
            chaos_logs.append(env.logs())
            raise


async def test_a_poison_task_fails_after_the_loss_cap_and_spares_the_rest(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """A task that SIGKILLs every worker running it ends failed after MAX_WORKER_LOSSES + 1
    attempts (1 loss allowed here, to keep the test short; the long run uses the default)."""
    scenario = dataclasses.replace(SCENARIOS["poison_task"], env={"MAX_WORKER_LOSSES": "1"})
    outcome = await run_scenario(scenario, tmp_path, 2, seed=25, keep_logs=chaos_logs)
    assert_recovered(outcome, 2)
    assert outcome.failed == 1 and outcome.completed == outcome.tasks - 1


async def test_postgres_table_locked_for_10_seconds(tmp_path: Path, chaos_logs: list[str]) -> None:
    """Submissions wait or get 503 while the tasks table is locked; nothing is lost after."""
    outcome = await run_scenario("postgres_table_lock", tmp_path, 1, seed=26, keep_logs=chaos_logs)
    assert_recovered(outcome, 1)


async def test_sqlite_disk_full(tmp_path: Path, chaos_logs: list[str]) -> None:
    """503 (never 500) while the SQLite file's disk is full; nothing is lost after."""
    scenario = available(SCENARIOS["sqlite_disk_full"])
    outcome = await run_scenario(scenario, tmp_path, 1, seed=27, keep_logs=chaos_logs)
    assert_recovered(outcome, 1)


async def test_results_postgres_cannot_store_fail_clearly(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """A result with a NUL character, and one over the size cap: the task fails with a clear
    error; the ordinary tasks reporting in the same exchanges complete."""
    outcome = await run_scenario("postgres_bad_results", tmp_path, 2, seed=28, keep_logs=chaos_logs)
    assert_recovered(outcome, 2)
    assert outcome.failed == 2


# --------------------------------------------------------------------------------------------
# Bugs found by the chaos suite: a strict xfail while open (scenarios.KNOWN_BUGS), a regression
# test once fixed (scenarios.FIXED_BUGS).
# --------------------------------------------------------------------------------------------


async def test_sigterm_to_the_process_group_lets_process_tasks_finish(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """B1: SIGTERM to the worker's process group (systemd's default KillMode; Ctrl-C sends
    SIGINT the same way) also reached its process-pool children: the running `cpu` attempt
    ended 'error' (BrokenProcessPool) at once instead of finishing within the grace period,
    burning a retry (the task failed with max_retries=0). Pool processes now ignore both."""
    await group_sigterm_during_a_cpu_task(tmp_path, chaos_logs, pool_ready=True)


async def test_sigterm_to_the_process_group_while_the_pool_starts_lets_the_task_finish(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """B5, found by the long run after B1's fix (worker_sigterm, group signal to a fresh
    worker): the signal comes as soon as the worker has spawned its pool processes (each a new
    interpreter that imports the worker's modules for a few hundred ms before the pool
    initializer runs), which it killed. Pool processes now start with the signals blocked."""
    await group_sigterm_during_a_cpu_task(tmp_path, chaos_logs, pool_ready=False)


async def group_sigterm_during_a_cpu_task(
    tmp_path: Path, chaos_logs: list[str], *, pool_ready: bool
) -> None:
    """A worker with a 20 s grace period runs a 1.5 s `cpu` task (max_retries=0); SIGTERM goes
    to its whole process group once its pool processes exist (`pool_ready`: once they also
    ignore SIGTERM, i.e. their initializer ran). The grace period covers the computation: the
    task must complete, in one attempt."""
    async with ChaosEnv(tmp_path) as env:
        try:
            await env.start_api()
            worker = env.start_worker("w", "--grace-period", "20")
            await env.processes.wait_for_workers("w")
            accepted = (await env.submit([cpu_task("c", 1.5, max_retries=0)])).accepted

            async def pool_up() -> bool:
                children = spawned_children(worker.popen.pid)
                return bool(children) and (not pool_ready or all(map(ignores_sigterm, children)))

            await eventually(pool_up, timeout=30, what="the pool processes", every=0.005)
            worker.signal(signal.SIGTERM)  # os.killpg: the worker and its pool processes
            assert await worker.wait(timeout=30) == 0
            outcome = Outcome("sigterm_process_group")
            await check_invariants(env, outcome, accepted, timeout=30)
            task = await env.task("c")
            assert (task["status"], [a["outcome"] for a in task["attempts"]]) == (
                "completed",
                ["completed"],
            ), task
            outcome.assert_ok()
        except BaseException:
            chaos_logs.append(env.logs())
            raise


def ignores_sigterm(pid: int) -> bool:
    """Whether process `pid` ignores SIGTERM (the SigIgn mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(
        (line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), "0"
    )
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


async def test_a_task_started_after_its_claim_lapsed_is_recovered_when_its_worker_dies(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """B2. The worker protocol driven by hand, as a worker whose POST /start was slow (retried
    through an API restart or a database stall: its 5 tries with backoff, or a 30 s SQLite busy
    wait, outlast a 2 s lease, and the worker does not renew leases of tasks it has claimed but
    not yet started). The sweeper puts the lapsed claim back on the queue; the late /start still
    succeeds, so the task is `running` with no lease anywhere in Redis. That worker then dies:
    nothing ever noticed (still `running` a minute later: the sweeper only scanned Redis leases,
    the database lease was never read). A real worker is up the whole time and could not take
    the task either (its claim of the queued copy is refused: the task is running). Fixed by
    re-taking the lease on a confirmed start and restoring missing leases from the database."""
    async with ChaosEnv(tmp_path) as env:
        try:
            await env.start_api()
            register = {"worker_id": "slow", "capabilities": ["sleep"]}
            assert (await env.http.post("/api/workers/register", json=register)).is_success
            accepted = (await env.submit([sleep_task("t", 0.2)])).accepted
            queue = RedisQueue(env.redis, lease_seconds=LEASE_SECONDS)
            assert await queue.claim("slow", ["sleep"], 1) == ["t"]

            async def lapsed_and_requeued() -> bool:
                return "t" in await queue.queued_ids("sleep")

            await eventually(lapsed_and_requeued, timeout=15, what="the sweeper to requeue it")
            # This late start succeeds (were it refused, the task would simply be pending and the
            # rescuer would run it).
            late = await env.http.post("/api/workers/slow/start", json={"task_ids": ["t"]})
            print("late /start:", late.json())
            # "slow" dies here: it never reports. A healthy worker is available all along.
            env.start_worker("rescuer")
            await env.processes.wait_for_workers("rescuer")
            died = time.time()

            async def recovered() -> bool:
                return bool((await env.task("t"))["status"] == "completed")

            try:
                await eventually(recovered, timeout=15, what="t to be reassigned")
            finally:
                print(f"t after {time.time() - died:.1f}s:", await env.task("t"))
            outcome = Outcome("lapsed_claim")
            await check_invariants(env, outcome, accepted, timeout=10)
            outcome.assert_ok()
        except BaseException:
            chaos_logs.append(env.logs())
            raise


def spawned_children(pid: int) -> list[int]:
    """Children of `pid` started by multiprocessing's spawn (process-pool workers; not its
    resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rfind(")") + 2 :].split()  # state ppid ...
            if int(fields[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes()
                if b"spawn_main" in cmdline:
                    found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


class DelayingProxy:
    """A TCP proxy in front of the API that holds back, for `delay` seconds, each request whose
    first bytes contain `needle`: a slow network or a busy API, for one kind of request. A
    request the client gave up on is still delivered (as a real network would)."""

    def __init__(self, target_port: int, needle: bytes, delay: float) -> None:
        self.target_port, self.needle, self.delay = target_port, needle, delay
        self.held = asyncio.Event()  # a matching request is being held
        self.answered = asyncio.Event()  # the API answered a held request
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> DelayingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        api_r, api_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        delayed = False

        async def upstream() -> None:
            nonlocal delayed
            while data := await client_r.read(65536):
                if self.needle in data:
                    delayed = True
                    self.held.set()
                    await asyncio.sleep(self.delay)
                api_w.write(data)
                await api_w.drain()

        async def downstream() -> None:
            while data := await api_r.read(65536):
                if delayed:
                    self.answered.set()
                with contextlib.suppress(ConnectionError):
                    client_w.write(data)
                    await client_w.drain()

        try:
            up = asyncio.ensure_future(upstream())
            down = asyncio.ensure_future(downstream())
            await up  # the client hung up; the API's answer to what was sent still comes back
            await asyncio.wait_for(down, timeout=10)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            api_w.close()
            client_w.close()


async def test_a_late_heartbeat_does_not_bring_back_a_deregistered_worker(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """B4, seen once in the long run (worker_sigterm: "still registered after a graceful
    shutdown"): a heartbeat cancelled mid-request by the shutting-down worker reached the API
    after its deregistration and listed it as active again until it was declared lost. A proxy
    that delays heartbeats makes the race deterministic."""
    async with ChaosEnv(tmp_path) as env:
        try:
            await env.start_api()
            async with DelayingProxy(env.processes.api_port, b"/heartbeat", 3.0) as proxy:
                # The later --api-url wins: the worker talks to the API through the proxy.
                worker = env.start_worker("late", "--api-url", f"http://127.0.0.1:{proxy.port}")
                await env.processes.wait_for_workers("late")
                await asyncio.wait_for(proxy.held.wait(), timeout=30)
                os.kill(worker.popen.pid, signal.SIGTERM)  # while that heartbeat is on its way
                assert await worker.wait(timeout=30) == 0
                await asyncio.wait_for(proxy.answered.wait(), timeout=30)
            workers = (await env.http.get("/api/workers")).json()["workers"]
            assert [(w["worker_id"], w["status"]) for w in workers] == [("late", "offline")]
        except BaseException:
            chaos_logs.append(env.logs())
            raise


class StartingUpPostgres:
    """Answers every connection the way PostgreSQL does between its start and "ready" (while it
    replays its WAL after a crash, for instance): SQLSTATE 57P03 "the database system is
    starting up". A real restart shows this for a fraction of a second (the long chaos run hits
    it); this holds the state so the test is deterministic."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> StartingUpPostgres:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # SSLRequest / GSSENCRequest first (answered "N"), then StartupMessage
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                await reader.readexactly(length - 8)
                if code not in (80877103, 80877104):
                    break
                writer.write(b"N")
            fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_postgres_starting_up_is_an_outage_not_an_internal_error(
    tmp_path: Path, chaos_logs: list[str]
) -> None:
    """B3, found by the long chaos run (then a strict xfail, fixed in app/main.py:_is_outage): while
    PostgreSQL starts up (SQLSTATE 57P03) the API answered 500 instead of 503 + Retry-After, and
    a worker dropped a report answered 500, so its task ran again."""
    async with ChaosEnv(tmp_path, postgres=True) as env:
        try:
            await env.start_api()
            assert env.postgres is not None
            await asyncio.to_thread(env.postgres.stop)
            async with StartingUpPostgres(env.postgres.port):
                answers = [
                    await env.http.post("/api/tasks", json=sleep_task(f"t{i}", 0.1))
                    for i in range(5)
                ]
            codes = [(a.status_code, "retry-after" in a.headers) for a in answers]
            assert codes == [(503, True)] * 5, codes
        except BaseException:
            chaos_logs.append(env.logs())
            raise
