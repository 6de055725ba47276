#!/usr/bin/env python3
"""Celery, Dramatiq and our scheduler on the same workloads, in one run, on the same machine.

    python bench/side_by_side.py [--json bench/results/side_by_side.json]
        [--peers celery,dramatiq] [--backends sqlite,postgres] [--tasks 10000] [--rate 200]
        [--duration 20] [--workers 2] [--sweep-workers 1,2,4] [--sweep-rates 100,200,400]

Every measure runs on a fresh embedded Valkey with bench.py's settings (appendonly yes,
appendfsync everysec). The peers run with their default settings and no result backend:

  drain         --tasks no-op tasks pre-loaded with no worker running, then --workers worker
                processes start (Celery: prefork --concurrency W; Dramatiq: --processes W with its
                default 8 threads); rate = tasks / (first start .. last completion).
  enqueue       --enqueue-tasks enqueues, one at a time, from one producer, no worker running:
                ``task.delay()`` / ``actor.send()`` in-process; ours: POST /api/tasks, 1 in flight.
  enqueue_live  the same from --enqueue-threads producers (threads; ours: requests in flight)
                while the workers run and execute what arrives.
  latency       open loop at --rate/s for --duration s with idle workers: submit -> start.

Ours are bench.py's phases (drain, latency, submit with --concurrency 1, submit_live with
--concurrency --enqueue-threads), run by bench.py itself as a subprocess on each backend. The
table gives each figure and the ratio ours / best peer; --json writes everything.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# Run as a script: import the project (app), bench.py and peers/.
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

from peers.record import (  # noqa: E402
    RECORD_DIR_ENV,
    REDIS_URL_ENV,
    Record,
    count_records,
    read_records,
)

import bench  # noqa: E402
from app.utils.embedded_servers import (  # noqa: E402
    EmbeddedServerError,
    ValkeyServer,
    parent_death_preexec,
    valkey_server_binary,
)
from bench import (  # noqa: E402
    BenchError,
    Child,
    CpuMeter,
    distribution_ms,
    per_second,
    spawn,
    wait_for_quiet,
    write_json,
)

Json = dict[str, Any]
PEERS = ("celery", "dramatiq")
BACKENDS = ("sqlite", "postgres")
MEASURES = ("drain", "enqueue", "enqueue_live", "latency")
PRODUCER = BENCH_DIR / "peers" / "producer.py"
DEADLINE = 600.0  # any wait for tasks or for a producer
READY_TIMEOUT = 90.0  # peer workers up and taking tasks
OURS_TIMEOUT = 3600.0  # one bench.py run (both backends)
POLL = 0.1


def say(message: str) -> None:
    print(f"[side-by-side] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- #
# Options
# --------------------------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Options:
    peers: list[str]
    backends: list[str]
    measures: list[str]
    tasks: int
    enqueue_tasks: int
    enqueue_threads: int
    rate: float
    duration: float
    workers: int
    worker_slots: int
    quiet_wait: float
    sweep_workers: list[int]
    sweep_rates: list[float]
    json_out: Path | None
    keep: bool


def _choices(allowed: Sequence[str], *, empty_ok: bool = False) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]
        unknown = sorted(set(items) - set(allowed))
        if unknown or (not items and not empty_ok):
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}")
        return items

    return parse


def _numbers(kind: Callable[[str], float]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [kind(x) for x in text.split(",") if x.strip()]
        if any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError("values must be > 0")
        return sorted(set(values))

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Celery, Dramatiq and ours on the same workloads.")
    p.add_argument("--peers", type=_choices(PEERS, empty_ok=True), default=list(PEERS))
    p.add_argument(
        "--backends", type=_choices(BACKENDS, empty_ok=True), default=list(BACKENDS),
        help="our stores ('none': peers only)",
    )  # fmt: skip
    p.add_argument("--measures", type=_choices(MEASURES), default=list(MEASURES))
    p.add_argument("--tasks", type=int, default=10_000, help="drain: pre-loaded tasks")
    # 10,000 like the drain: a burst of 3,000 lasted one to three seconds, and the API's and
    # workers' first second (connections, first exchanges) weighed on it: ours measured 1,129/s
    # at 3,000 and 1,721/s at 10,000 on SQLite in two runs of one morning, Celery 2,952 and 2,817.
    p.add_argument("--enqueue-tasks", type=int, default=10_000, help="enqueue measures: tasks")
    p.add_argument("--enqueue-threads", type=int, default=16, help="enqueue_live: producers")
    p.add_argument("--rate", type=float, default=200.0, help="latency: tasks per second")
    p.add_argument("--duration", type=float, default=20.0, help="latency: seconds")
    p.add_argument("--workers", type=int, default=2, help="worker processes of every system")
    p.add_argument("--worker-slots", type=int, default=10, help="ours: --max-concurrent-tasks")
    p.add_argument(
        "--quiet-wait", type=float, default=30.0,
        help="before each measure wait up to this many s for the machine to be <15%% busy",
    )  # fmt: skip
    p.add_argument("--sweep-workers", type=_numbers(int), default=[], help="drain at each: 1,2,4")
    p.add_argument("--sweep-rates", type=_numbers(float), default=[], help="latency at each")
    p.add_argument("--json", dest="json_out", type=Path, help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> Options:
    args = build_parser().parse_args(argv)
    counts = (args.tasks, args.enqueue_tasks, args.enqueue_threads, args.workers)
    if min(counts) < 1 or args.worker_slots < 1 or args.rate <= 0 or args.duration <= 0:
        build_parser().error("counts, --rate and --duration must be positive")
    return Options(**vars(args))


# --------------------------------------------------------------------------------------------- #
# A peer's stack: Valkey, the peer's worker processes, producer processes
# --------------------------------------------------------------------------------------------- #


def worker_command(peer: str, processes: int) -> list[str]:
    """The peer's own worker CLI, default settings except the number of worker processes."""
    if peer == "celery":
        return [sys.executable, "-m", "celery", "-A", "peers.celery_app", "worker",
                "--concurrency", str(processes), "--loglevel", "WARNING"]  # fmt: skip
    return [sys.executable, "-m", "dramatiq", "peers.dramatiq_app", "--processes", str(processes)]


class PeerStack:
    """A fresh Valkey (bench.py's settings) and, once started, the peer's worker processes."""

    def __init__(self, peer: str, root: Path) -> None:
        self.peer = peer
        self.root = root
        self.records = root / "records"
        self.records.mkdir(parents=True)
        self.valkey = ValkeyServer(
            root / "valkey",
            appendonly=True,
            appendfsync="everysec",
            parent_death_signal=signal.SIGTERM,
        )
        self.workers: Child | None = None
        self.producers = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(BENCH_DIR), *filter(None, [env.get("PYTHONPATH")])]
        env["PYTHONPATH"] = os.pathsep.join(paths)  # the workers import peers.<peer>_app
        env.update(PYTHONUNBUFFERED="1")
        env[REDIS_URL_ENV] = self.valkey.url
        env[RECORD_DIR_ENV] = str(self.records)
        return env

    def start_workers(self, processes: int) -> None:
        cmd = worker_command(self.peer, processes)
        self.workers = spawn(f"{self.peer} workers", cmd, self.env(), self.root / "workers.log")

    def check_alive(self) -> None:
        if self.workers is not None and self.workers.has_exited():
            raise BenchError(f"{self.workers.name} exited:\n{self.workers.tail()}")
        if not self.valkey.is_running():
            raise BenchError(f"valkey exited (see {self.valkey.log_file})")

    def produce(self, *args: str, timeout: float = DEADLINE) -> Json:
        """Run bench/peers/producer.py to the end; its figures."""
        self.producers += 1
        base = self.root / f"producer-{self.producers}"
        cmd = [sys.executable, str(PRODUCER), self.peer, *args, "--out", f"{base}.json"]
        child = spawn(f"{self.peer} producer", cmd, self.env(), Path(f"{base}.log"))
        try:
            deadline = time.monotonic() + timeout
            while not child.has_exited():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{child.name} still running after {timeout:.0f} s")
                time.sleep(POLL / 2)
        finally:
            child.stop()
        if child.popen.returncode != 0:
            raise BenchError(f"{child.name} failed:\n{child.tail()}")
        result: Json = json.loads(Path(f"{base}.json").read_text())
        if result.get("errors"):
            raise BenchError(f"{child.name}: {result['errors']}; first: {result['first_error']}")
        return result

    def wait_records(self, count: int, timeout: float = DEADLINE, *, warmup: bool = False) -> None:
        """Until ``count`` tasks (or warm-up tasks) have run."""
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            self.check_alive()
            numbered, warm = count_records(self.records)
            done = warm if warmup else numbered
            if done >= count:
                return
            time.sleep(POLL)
        raise BenchError(f"{self.peer}: {done}/{count} tasks ran after {timeout:.0f} s")

    def start_ready(self, processes: int) -> None:
        """Start the workers and wait until they run tasks (2 warm-ups per process), then idle."""
        self.start_workers(processes)
        self.produce("send", "--count", "0", "--warmup", str(2 * processes))
        self.wait_records(2 * processes, READY_TIMEOUT, warmup=True)
        time.sleep(1.0)  # let them settle into their idle wait, as bench.py does

    def groups(self) -> dict[int, str]:
        """Process group -> component, for CPU accounting (bench.CpuMeter)."""
        found = {self.workers.popen.pid: "workers"} if self.workers else {}
        return found | ({self.valkey.pid: "valkey"} if self.valkey.pid is not None else {})

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        self.valkey.stop()


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


@contextlib.contextmanager
def metered(stack: PeerStack) -> Iterator[Json]:
    """bench.CpuMeter over a window; a producer that ran (and was reaped) inside the window is
    charged as "producer" (it left /proc, so CpuMeter alone would count it as others')."""
    meter = CpuMeter(stack.groups)
    before = _children_cpu()
    cpu: Json = {}
    try:
        yield cpu
    finally:
        cpu.update(meter.stop())
        producer = _children_cpu() - before
        others = max(0.0, cpu["cpu_s"]["others"] - producer)
        cpu["cpu_s"] |= {"producer": round(producer, 2), "others": round(others, 2)}
        capacity = cpu["window_s"] * (os.cpu_count() or 1)
        cpu["others_pct"] = round(100 * others / capacity, 1) if capacity > 0 else 0.0


# --------------------------------------------------------------------------------------------- #
# The peers' measures
# --------------------------------------------------------------------------------------------- #


@dataclass
class PeerContext:
    peer: str
    root: Path
    opts: Options
    runs: int = 0

    @contextlib.contextmanager
    def stack(self, label: str) -> Iterator[PeerStack]:
        self.runs += 1
        quiet = wait_for_quiet(self.opts.quiet_wait)
        say(f"--- {self.peer}: {label} (machine {quiet['busy_pct_before']}% busy before)")
        stack = PeerStack(self.peer, self.root / self.peer / f"{self.runs:02d}-{label}")
        try:
            stack.valkey.start()
            yield stack
        finally:
            stack.close()


def verify_records(records: list[Record], expected: int) -> Json:
    """Every task ran exactly once (no result backend: the records are the only evidence)."""
    numbers = {r.n for r in records}
    checks = {"tasks": len(records), "unique": len(numbers)}
    ok = checks["tasks"] == checks["unique"] == expected and numbers == set(range(expected))
    return {**checks, "ok": ok}


def peer_drain(ctx: PeerContext, workers: int) -> Json:
    n = ctx.opts.tasks
    with ctx.stack(f"drain-w{workers}") as stack:
        preload = stack.produce("send", "--count", str(n))
        with metered(stack) as cpu:
            spawned = time.time()
            stack.start_workers(workers)
            stack.wait_records(n)
        records = read_records(stack.records)
    check = verify_records(records, n)
    first, last = min(r.start for r in records), max(r.start for r in records)
    say(f"{ctx.peer} drain: {n} in {last - first:.2f} s = {n / (last - first):.0f}/s")
    return {
        "tasks": n,
        "workers": workers,
        "preload_seconds": preload["seconds"],
        "drain_seconds": round(last - first, 3),
        "drain_tasks_per_s": per_second(n, last - first),
        "from_spawn_seconds": round(last - spawned, 3),
        "from_spawn_tasks_per_s": per_second(n, last - spawned),
        "verification": check,
        "cpu": cpu,
    }


def peer_enqueue(ctx: PeerContext, threads: int, *, live: bool) -> Json:
    opts = ctx.opts
    with ctx.stack("enqueue_live" if live else "enqueue") as stack:
        if live:
            stack.start_ready(opts.workers)
        with metered(stack) as cpu:
            sent = stack.produce(
                "send", "--count", str(opts.enqueue_tasks), "--threads", f"{threads}"
            )
        if live:  # they must all run, or the enqueue rate would flatter a peer that drops them
            stack.wait_records(opts.enqueue_tasks)
    say(f"{ctx.peer} enqueue x{threads}{' live' if live else ''}: {sent['tasks_per_s']:.0f}/s")
    return {
        "tasks": opts.enqueue_tasks,
        "threads": threads,
        "workers_running": live,
        "seconds": sent["seconds"],
        "tasks_per_s": sent["tasks_per_s"],
        "cpu": cpu,
    }


def _trend(records: list[Record]) -> Json:
    """submit->start p50 of the first and the last quarter of sends: steady or growing."""
    ordered = sorted(records, key=lambda r: r.sent)
    quarter = max(1, len(ordered) // 4)
    first = distribution_ms([r.start - r.sent for r in ordered[:quarter]])
    last = distribution_ms([r.start - r.sent for r in ordered[-quarter:]])
    return {"first_quarter_p50_ms": first["p50"], "last_quarter_p50_ms": last["p50"]}


def peer_latency(ctx: PeerContext, rate: float) -> Json:
    duration = ctx.opts.duration
    with ctx.stack(f"latency-{rate:g}") as stack:
        stack.start_ready(ctx.opts.workers)
        with metered(stack) as cpu:
            loop = stack.produce(
                "openloop", "--rate", f"{rate}", "--duration", f"{duration}",
                timeout=duration + DEADLINE,
            )  # fmt: skip
        stack.wait_records(loop["sent"], 120 + duration)
        records = read_records(stack.records)
    start = distribution_ms([r.start - r.sent for r in records])
    say(f"{ctx.peer} latency at {rate:g}/s: p50 {start['p50']} ms, p99 {start['p99']} ms")
    return {
        "target_rate": rate,
        "duration": duration,
        "sent": loop["sent"],
        "achieved_rate": loop["achieved_rate"],
        "max_send_lag_ms": loop["max_send_lag_ms"],
        "submit_to_start_ms": start,
        "submit_to_start_trend": _trend(records),
        "cpu": cpu,
    }


def run_peer(peer: str, root: Path, opts: Options, sweeps: Json) -> Json:
    ctx = PeerContext(peer, root, opts)
    results: Json = {}
    if "drain" in opts.measures:
        results["drain"] = peer_drain(ctx, opts.workers)
    if "enqueue" in opts.measures:
        results["enqueue"] = peer_enqueue(ctx, 1, live=False)
    if "enqueue_live" in opts.measures:
        results["enqueue_live"] = peer_enqueue(ctx, opts.enqueue_threads, live=True)
    if "latency" in opts.measures:
        results["latency"] = peer_latency(ctx, opts.rate)
    for workers in opts.sweep_workers:
        drain = results["drain"] if workers == opts.workers and "drain" in results else None
        add_worker_point(sweeps, peer, drain or peer_drain(ctx, workers))
    for rate in opts.sweep_rates:
        latency = results["latency"] if rate == opts.rate and "latency" in results else None
        add_rate_point(sweeps, peer, latency or peer_latency(ctx, rate))
    return results


# --------------------------------------------------------------------------------------------- #
# Sweeps: one point per (system, workers) and (system, offered rate), for bench/plot.py
# --------------------------------------------------------------------------------------------- #


def add_worker_point(sweeps: Json, system: str, drain: Json, workers: int | None = None) -> None:
    point = {
        "workers": workers if workers is not None else drain["workers"],
        "drain_tasks_per_s": drain["drain_tasks_per_s"],
        "from_spawn_tasks_per_s": drain["from_spawn_tasks_per_s"],
        "others_pct": drain["cpu"]["others_pct"],
    }
    sweeps["workers"].setdefault(system, []).append(point)


def add_rate_point(sweeps: Json, system: str, latency: Json) -> None:
    start = latency["submit_to_start_ms"]
    point = {
        "rate": latency["target_rate"],
        "achieved_rate": latency["achieved_rate"],
        **{f"{q}_ms": start[q] for q in ("p50", "p95", "p99", "max")},
        "others_pct": latency["cpu"]["others_pct"],
    }
    sweeps["rates"].setdefault(system, []).append(point)


# --------------------------------------------------------------------------------------------- #
# Ours: bench.py as a subprocess (its own fresh stacks, both backends per run)
# --------------------------------------------------------------------------------------------- #


def run_child(cmd: list[str], log: Path, timeout: float) -> int:
    """Run to the end with stderr shown; on interruption or timeout SIGTERM it (bench.py then
    stops everything it started), then SIGKILL its group."""
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            start_new_session=True,  # Ctrl-C reaches us; we stop it in order
            preexec_fn=parent_death_preexec(signal.SIGTERM),
        )
    child = Child("bench.py", popen, log)
    try:
        return popen.wait(timeout)
    finally:
        child.stop(timeout=60)


def run_bench(opts: Options, root: Path, label: str, phases: str, *extra: str) -> Json:
    """One bench.py run on every chosen backend; its results per backend."""
    out = root / f"ours-{label}.json"
    cmd = [sys.executable, str(BENCH_DIR / "bench.py"), "--phases", phases]
    cmd += ["--backend", "both" if len(opts.backends) == 2 else opts.backends[0]]
    cmd += ["--tasks", str(opts.tasks), "--submit-tasks", str(opts.enqueue_tasks)]
    cmd += ["--rate", f"{opts.rate}", "--duration", f"{opts.duration}"]
    cmd += ["--workers", str(opts.workers), "--worker-slots", str(opts.worker_slots)]
    cmd += ["--quiet-wait", f"{opts.quiet_wait}", "--json", str(out), *extra]  # extra wins
    say(f"--- ours: {' '.join(['bench.py', *cmd[2:]])}")
    code = run_child(cmd, root / f"ours-{label}.log", OURS_TIMEOUT)
    if code != 0 or not out.exists():
        raise BenchError(f"bench.py failed (exit {code}); see the lines above")
    results: Json = json.loads(out.read_text())["results"]
    return results


def run_ours(opts: Options, root: Path, sweeps: Json) -> Json:
    results: Json = {f"ours-{b}": {} for b in opts.backends}
    threads = opts.enqueue_threads
    plan: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
        # (label, {our measure: bench.py phase}, bench.py options for that run)
        ("main", {"drain": "drain", "latency": "latency"}, ()),
        ("enqueue", {"enqueue": "submit"}, ("--concurrency", "1")),
        ("enqueue_live", {"enqueue_live": "submit_live"}, ("--concurrency", f"{threads}")),
    ]
    for label, names, extra in plan:
        wanted = [(ours, theirs) for ours, theirs in names.items() if ours in opts.measures]
        if not wanted:
            continue
        found = run_bench(opts, root, label, ",".join(t for _, t in wanted), *extra)
        for backend in opts.backends:
            for ours, theirs in wanted:
                results[f"ours-{backend}"][ours] = found[backend][theirs]
    _sweep_ours(opts, root, results, sweeps)
    return results


def _sweep_ours(opts: Options, root: Path, results: Json, sweeps: Json) -> None:
    """bench.py once per swept value (the main run's value is not measured again)."""
    for workers in opts.sweep_workers:
        found = results
        if workers != opts.workers or "drain" not in opts.measures:
            found = _rename(
                run_bench(opts, root, f"w{workers}", "drain", "--workers", f"{workers}")
            )
        for system in results:
            add_worker_point(sweeps, system, found[system]["drain"], workers)
    for rate in opts.sweep_rates:
        found = results
        if rate != opts.rate or "latency" not in opts.measures:
            found = _rename(run_bench(opts, root, f"r{rate:g}", "latency", "--rate", f"{rate}"))
        for system in results:
            add_rate_point(sweeps, system, found[system]["latency"])


def _rename(by_backend: Json) -> Json:
    return {f"ours-{backend}": phases for backend, phases in by_backend.items()}


# --------------------------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------------------------- #

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Row:
    label: str
    path: tuple[str, ...]
    unit: str
    better: str | None = None  # None: context, no ratio


def rows(opts: Options) -> list[Row]:
    live = f"enqueue: {opts.enqueue_threads} producers, workers on"
    lat = f"latency at {opts.rate:g}/s:"
    return [
        Row("drain: first start -> last done", ("drain", "drain_tasks_per_s"), "tasks/s", HIGHER),
        Row("drain: from worker spawn", ("drain", "from_spawn_tasks_per_s"), "tasks/s", HIGHER),
        Row("drain: every task ran once", ("drain", "verification", "ok"), ""),
        Row("enqueue: 1 producer, no workers", ("enqueue", "tasks_per_s"), "tasks/s", HIGHER),
        Row(live, ("enqueue_live", "tasks_per_s"), "tasks/s", HIGHER),
        Row(f"{lat} achieved", ("latency", "achieved_rate"), "tasks/s"),
        Row(f"{lat} submit->start p50", ("latency", "submit_to_start_ms", "p50"), "ms", LOWER),
        Row(f"{lat} submit->start p95", ("latency", "submit_to_start_ms", "p95"), "ms", LOWER),
        Row(f"{lat} submit->start p99", ("latency", "submit_to_start_ms", "p99"), "ms", LOWER),
        Row(f"{lat} p50, last 1/4 of run", _last_quarter(), "ms"),
        *(
            Row(f"others' CPU: {m}", (m, "cpu", "others_pct"), "% machine")
            for m in MEASURES
            if m in opts.measures
        ),
    ]


def _last_quarter() -> tuple[str, ...]:
    return ("latency", "submit_to_start_trend", "last_quarter_p50_ms")


def _get(result: Json, path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def ratios(results: Json, row: Row) -> dict[str, float]:
    """ours / best peer, for each of our backends (best: highest rate, lowest latency)."""
    peers = [_get(r, row.path) for s, r in results.items() if not s.startswith("ours-")]
    values = [float(v) for v in peers if isinstance(v, int | float) and v == v and v > 0]
    if row.better is None or not values:
        return {}
    best = max(values) if row.better == HIGHER else min(values)
    found = {}
    for system, result in results.items():
        value = _get(result, row.path)
        if system.startswith("ours-") and isinstance(value, int | float) and value == value:
            found[system] = round(float(value) / best, 3)
    return found


def format_table(results: Json, opts: Options) -> tuple[str, Json]:
    systems = list(results)
    ours = [s for s in systems if s.startswith("ours-")]
    names = [*systems, *(f"{s.removeprefix('ours-')}/best" for s in ours)]
    header = f"{'measure':<44}{'unit':<10}" + "".join(f"{n:>15}" for n in names)
    lines, table = [header, "-" * len(header)], {}
    for row in rows(opts):
        cells = [bench._cell(_get(results[s], row.path)) for s in systems]
        if all(c == "-" for c in cells):
            continue
        found = ratios(results, row)
        table[row.label] = {"unit": row.unit, "better": row.better, "ratio_ours_over_best": found}
        cells += [f"{found[s]:.2f}x" if s in found else "" for s in ours]
        lines.append(f"{row.label:<44}{row.unit:<10}" + "".join(f"{c:>15}" for c in cells))
    lines.append("ratio = ours / best peer: above 1 is better for rates, below 1 for latencies")
    return "\n".join(lines), table


def describe(opts: Options) -> str:
    return (
        f"{opts.workers} worker processes per system (ours: x {opts.worker_slots} slots;"
        f" Celery prefork; Dramatiq 8 threads each); drain {opts.tasks:,} no-op tasks; enqueue"
        f" {opts.enqueue_tasks:,} (1 producer; {opts.enqueue_threads} with workers on); latency"
        f" {opts.rate:g}/s for {opts.duration:g} s; Valkey AOF everysec; {os.cpu_count()} CPUs"
    )


def versions() -> Json:
    found: Json = {}
    for name in ("celery", "kombu", "dramatiq", "redis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError, EmbeddedServerError):
        argv = [str(valkey_server_binary()), "--version"]
        found["valkey"] = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        found["valkey"] = found["valkey"].strip()
    return found


def environment(opts: Options) -> Json:
    return {
        "kind": "side_by_side",
        "revision": bench.source_revision(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "versions": versions(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "command": " ".join(["python", *sys.argv]),
        "setup": describe(opts),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


@dataclass
class Outcome:
    results: Json = field(default_factory=dict)
    sweeps: Json = field(default_factory=lambda: {"workers": {}, "rates": {}})


def check_peers_installed(peers: list[str]) -> None:
    missing = [p for p in peers if importlib.util.find_spec(p) is None]
    if missing:
        raise BenchError(
            f"{', '.join(missing)} not installed: pip install -r bench/requirements-bench.txt"
        )


def run(opts: Options, root: Path) -> Outcome:
    check_peers_installed(opts.peers)
    outcome = Outcome()
    for peer in opts.peers:
        outcome.results[peer] = run_peer(peer, root, opts, outcome.sweeps)
    if opts.backends:
        outcome.results |= run_ours(opts, root, outcome.sweeps)
    return outcome


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: the finally blocks stop every process


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    document = environment(opts)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with bench.work_directory(opts.keep) as root:
            outcome = run(opts, Path(root))
    except KeyboardInterrupt:
        say("interrupted; everything was stopped")
        return 130
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    text, table = format_table(outcome.results, opts)
    print(describe(opts))
    print(text)
    if opts.json_out is not None:
        document |= {"results": outcome.results, "table": table, "sweeps": outcome.sweeps}
        write_json(opts.json_out, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
