#!/usr/bin/env python3
"""Memory across a long run: is the RSS of the API and of the workers flat?

    python bench/soak.py --backend sqlite|postgres|both [--rounds 10] [--tasks 10000]
        [--variants echo,mixed] [--json bench/results/soak.json]

One stack per backend and variant, started by bench.py's machinery (Valkey with AOF everysec, the
database: a SQLite file or a private PostgreSQL with fsync=on, the API under uvicorn and 2 worker
processes with default settings), then --rounds rounds of: submit --tasks tasks through
POST /api/tasks/batch, wait until none is pending or running, check the counts, and sample the
RSS of every process (each with its child processes: a worker's process pool, PostgreSQL's
backends).

Variants:
  echo   every task is an `echo` no-op.
  mixed  per block of 20: a `fail` task with max_retries=1 (an error, a retry after backoff, a
         final failure), a task depending on it (failed by the cascade), an `analysis` task
         depending on an `echo` task (dependency results handed over), a `cpu` task (run in
         the worker's process pool) and 15 `echo` tasks.

Verdict: growth of each process's RSS (with its children) from the end of round --warmup to the
end of the last round; "flat" when it is at most --threshold percent (default 10). The API and
the workers are judged; Valkey and PostgreSQL are sampled for context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]  # run as a script: app and bench.py

import bench  # noqa: E402
from bench import (  # noqa: E402
    BenchError,
    PhaseContext,
    Stack,
    Submitted,
    count_tasks,
    say,
    wait_for_quiet,
    write_json,
)

Json = dict[str, Any]
MIB = 1024 * 1024
VARIANTS = ("echo", "mixed")
MIX_PERIOD = 20  # a mixed block: the dependencies of a block stay inside it
FAILING_SLOTS = (0, 1)  # the `fail` task and its dependent
JUDGED = ("api", "worker")  # name prefixes the verdict covers; the servers are context


@dataclass(frozen=True)
class SoakOptions:
    backends: list[str]
    variants: list[str]
    rounds: int
    tasks: int
    warmup: int
    threshold_pct: float
    settle: float
    quiet_wait: float
    bench: bench.Options  # the stack's settings, in bench.py's terms
    json_out: Path | None
    keep: bool


def _variant_list(text: str) -> list[str]:
    variants = [v.strip() for v in text.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        raise argparse.ArgumentTypeError(f"choose from {VARIANTS}")
    return variants


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="RSS of the API and workers across many rounds.")
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--variants", type=_variant_list, default=list(VARIANTS), help="echo,mixed")
    p.add_argument("--rounds", type=bench._positive_int, default=10)
    p.add_argument("--tasks", type=bench._positive_int, default=10_000, help="tasks per round")
    p.add_argument("--warmup", type=bench._positive_int, default=2, help="rounds before the base")
    p.add_argument("--threshold", type=float, default=10.0, help="flat: growth <= this %%")
    p.add_argument("--settle", type=float, default=1.0, help="s between the last task and a sample")
    p.add_argument("--quiet-wait", type=float, default=10.0, help="see bench.py")
    p.add_argument("--workers", type=bench._positive_int, default=2)
    p.add_argument("--worker-slots", type=bench._positive_int, default=10)
    p.add_argument("--worker-transport", choices=["direct", "http"], default="direct")
    p.add_argument("--batch-size", type=bench._positive_int, default=500)
    p.add_argument("--batch-concurrency", type=bench._positive_int, default=2)
    p.add_argument("--pg-fsync", choices=["on", "off"], default="on")
    p.add_argument("--json", dest="json_out", type=Path, help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> SoakOptions:
    args = build_parser().parse_args(argv)
    if args.rounds <= args.warmup:
        build_parser().error("--rounds must be greater than --warmup")
    stack_args = ["--backend", args.backend, "--tasks", str(args.tasks)]
    stack_args += ["--workers", str(args.workers), "--worker-slots", str(args.worker_slots)]
    stack_args += ["--worker-transport", args.worker_transport, "--pg-fsync", args.pg_fsync]
    stack_args += ["--batch-size", str(args.batch_size)]
    stack_args += ["--batch-concurrency", str(args.batch_concurrency)]
    options = bench.parse_args(stack_args)
    return SoakOptions(
        backends=options.backends,
        variants=args.variants,
        rounds=args.rounds,
        tasks=args.tasks,
        warmup=args.warmup,
        threshold_pct=args.threshold,
        settle=max(0.0, args.settle),
        quiet_wait=args.quiet_wait,
        bench=dataclasses.replace(options, phases=[], json_out=None, keep=args.keep),
        json_out=args.json_out,
        keep=args.keep,
    )


# --------------------------------------------------------------------------------------------- #
# The tasks of a round
# --------------------------------------------------------------------------------------------- #


def echo_task(rnd: int, n: int) -> Json:
    return {"task_type": "echo", "payload": {"round": rnd, "n": n}}


def mixed_task(rnd: int, n: int) -> Json:
    """Error, retry, cascade and dependency paths, in fixed places of each block of 20."""
    task_id = f"soak-r{rnd}-{n}"
    slot = n % MIX_PERIOD
    if slot == 0:  # fails, is retried once after a backoff, fails for good
        params = {"message": "soak: failing on purpose"}
        body = {"task_type": "fail", "payload": {"parameters": params}, "max_retries": 1}
    elif slot == 4:  # runs in the worker's process pool, whose processes are sampled too
        body = {"task_type": "cpu", "payload": {"parameters": {"iterations": 1000}}}
    elif slot in (1, 3):  # slot 1 fails with its dependency; slot 3 gets slot 2's result
        body = {"task_type": "analysis", "payload": {"data": [n, rnd, 1.5]}}
        body["dependencies"] = [f"soak-r{rnd}-{n - 1}"]
    else:
        body = echo_task(rnd, n)
    return {"task_id": task_id, **body}


def round_tasks(variant: str, rnd: int, count: int) -> list[Json]:
    make = mixed_task if variant == "mixed" else echo_task
    return [make(rnd, n) for n in range(count)]


def expected_failed(variant: str, count: int) -> int:
    if variant != "mixed":
        return 0
    return sum(1 for n in range(count) if n % MIX_PERIOD in FAILING_SLOTS)


def batches(tasks: list[Json], size: int) -> list[list[Json]]:
    """Batches that never split a mixed block: a dependency in a batch still in flight on the
    other lane would be refused as unknown."""
    size = max(MIX_PERIOD, size - size % MIX_PERIOD)
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


async def submit_round(stack: Stack, tasks: list[Json]) -> Submitted:
    out = Submitted()
    pending = iter(batches(tasks, stack.opts.batch_size))

    async def lane() -> None:
        for chunk in pending:
            response = await stack.client.post(
                "/api/tasks/batch", json={"tasks": chunk}, timeout=300.0
            )
            if response.is_success:
                out.accepted += len(chunk)
            else:
                out.refused(response)

    out.seconds = await bench._run_lanes(stack.opts.batch_concurrency, lane)
    return out.check("submission")


async def wait_settled(stack: Stack, timeout: float = bench.DRAIN_DEADLINE) -> None:
    """Until no task is pending (waiting, retrying, or blocked on a dependency) or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        busy = await count_tasks(stack.client, "pending")
        busy = busy or await count_tasks(stack.client, "running")
        if not busy:
            return
        await asyncio.sleep(bench.POLL_INTERVAL)
    raise BenchError(f"tasks still pending or running after {timeout:.0f} s")


async def exact_count(stack: Stack, status: str, expected: int) -> int:
    """The number of tasks in ``status``: the API counts exactly up to 10,000 past the offset,
    so the count starts just below what is expected."""
    params: dict[str, str | int] = {"status": status, "limit": 1, "offset": max(0, expected - 1)}
    response = await stack.client.get("/api/tasks", params=params)
    response.raise_for_status()
    answer = response.json()
    if not answer.get("total_exact", True):
        raise BenchError(f"more than {answer['total']} tasks {status}; expected {expected}")
    return int(answer["total"])


# --------------------------------------------------------------------------------------------- #
# Memory
# --------------------------------------------------------------------------------------------- #


def _peak_mib(pid: int) -> float | None:
    """VmHWM: the highest RSS the process ever had (Linux)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def _rss_and_pss(proc: psutil.Process) -> tuple[int, int]:
    """PSS splits each shared page between the processes mapping it: summed over PostgreSQL's
    backends it counts shared_buffers once, where RSS counts it once per backend."""
    info = proc.memory_full_info()
    return info.rss, getattr(info, "pss", info.rss)  # pss: Linux only


def process_memory(pid: int) -> Json:
    """RSS of a process and of all its descendants (a pool's or a server's child processes),
    and their PSS for comparison."""
    proc = psutil.Process(pid)
    own, pss = _rss_and_pss(proc)
    children = proc.children(recursive=True)
    theirs = 0
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            rss, shared_part = _rss_and_pss(child)
            theirs, pss = theirs + rss, pss + shared_part
    return {
        "rss_mib": round(own / MIB, 1),
        "children": len(children),
        "children_rss_mib": round(theirs / MIB, 1),
        "total_mib": round((own + theirs) / MIB, 1),
        "total_pss_mib": round(pss / MIB, 1),
        "peak_mib": _peak_mib(pid),
    }


def sampled_processes(stack: Stack, postgres_pid: int | None) -> dict[str, int]:
    found: dict[str, int] = {}
    if stack.api is not None:
        found["api"] = stack.api.popen.pid
    for n, child in enumerate(stack.workers, start=1):
        found[f"worker-{n}"] = child.popen.pid
    if stack.valkey.pid is not None:
        found["valkey"] = stack.valkey.pid
    if postgres_pid is not None:
        found["postgres"] = postgres_pid
    return found


def sample_memory(stack: Stack, postgres_pid: int | None) -> dict[str, Json]:
    stack.check_alive()
    return {
        name: process_memory(pid) for name, pid in sampled_processes(stack, postgres_pid).items()
    }


# --------------------------------------------------------------------------------------------- #
# Rounds
# --------------------------------------------------------------------------------------------- #


@dataclass
class Soak:
    """One stack running one variant, and the totals every round adds to."""

    opts: SoakOptions
    ctx: PhaseContext
    stack: Stack
    variant: str
    completed: int = 0
    failed: int = 0


async def run_round(soak: Soak, rnd: int) -> Json:
    count = soak.opts.tasks
    failing = expected_failed(soak.variant, count)
    soak.completed += count - failing
    soak.failed += failing
    meter = soak.ctx.meter(soak.stack)
    began = time.perf_counter()
    sent = await submit_round(soak.stack, round_tasks(soak.variant, rnd, count))
    await wait_settled(soak.stack)
    seconds = time.perf_counter() - began
    cpu = meter.stop()
    completed = await exact_count(soak.stack, "completed", soak.completed)
    failed = await exact_count(soak.stack, "failed", soak.failed)
    if (completed, failed) != (soak.completed, soak.failed):
        wanted = f"{soak.completed} and {soak.failed}"
        raise BenchError(f"round {rnd}: {completed} completed, {failed} failed; wanted {wanted}")
    await asyncio.sleep(soak.opts.settle)  # a measuring pause, not a synchronisation
    return {
        "round": rnd,
        "tasks": sent.accepted,
        "submit_seconds": round(sent.seconds, 2),
        "seconds": round(seconds, 2),
        "tasks_per_s": bench.per_second(sent.accepted, seconds),
        "completed_total": completed,
        "failed_total": failed,
        "cpu_ms_per_task": {
            k: round(1000 * v / count, 3) for k, v in cpu["cpu_s"].items() if k != "others"
        },
        "others_pct": cpu["others_pct"],
        "memory": sample_memory(soak.stack, soak.ctx.provider.pgid()),
    }


def judged(name: str) -> bool:
    return name.startswith(JUDGED)


def slope(values: Sequence[float]) -> float:
    """MiB per round, least squares: a steady climb that stays under the threshold shows here."""
    if len(values) < 2:
        return 0.0
    fit = statistics.linear_regression(range(len(values)), values)
    return round(fit.slope, 2)


def process_growth(rounds: list[Json], name: str, warmup: int, threshold: float) -> Json:
    series = [r["memory"][name]["total_mib"] for r in rounds[warmup - 1 :]]
    base, last = series[0], series[-1]
    pct = 100 * (last - base) / base if base else 0.0
    pss_base = rounds[warmup - 1]["memory"][name]["total_pss_mib"]
    pss_last = rounds[-1]["memory"][name]["total_pss_mib"]
    return {
        "base_mib": base,
        "last_mib": last,
        "growth_mib": round(last - base, 1),
        "growth_pct": round(pct, 1),
        "slope_mib_per_round": slope(series),
        "pss_base_mib": pss_base,
        "pss_last_mib": pss_last,
        "peak_mib": rounds[-1]["memory"][name]["peak_mib"],  # VmHWM of the main process alone
        "judged": judged(name),
        "flat": pct <= threshold,
    }


def verdict(rounds: list[Json], warmup: int, threshold: float) -> Json:
    names = list(rounds[-1]["memory"])
    growth = {n: process_growth(rounds, n, warmup, threshold) for n in names}
    return {
        "from_end_of_round": warmup,
        "to_end_of_round": rounds[-1]["round"],
        "threshold_pct": threshold,
        "measure": "RSS of the process plus its child processes",
        "flat": all(g["flat"] for g in growth.values() if g["judged"]),
        "processes": growth,
    }


# --------------------------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------------------------- #


def table_header(names: Sequence[str]) -> str:
    cells = "".join(f"{n:>10}" for n in names)
    return f"{'round':>5}{'s':>7}{'tasks/s':>9}{cells}{'others%':>9}   (RSS MiB with children)"


def table_row(label: str, memory: dict[str, Json], row: Json | None = None) -> str:
    cells = "".join(f"{m['total_mib']:>10.1f}" for m in memory.values())
    if row is None:
        return f"{label:>5}{'':>7}{'':>9}{cells}"
    timing = f"{row['seconds']:>7.1f}{row['tasks_per_s']:>9,.0f}"
    return f"{label:>5}{timing}{cells}{row['others_pct']:>9.1f}"


def format_verdict(result: Json) -> str:
    v = result["verdict"]
    lines = [
        f"growth from the end of round {v['from_end_of_round']} to the end of round"
        f" {v['to_end_of_round']} (flat: <= {v['threshold_pct']:g} %):"
    ]
    for name, g in v["processes"].items():
        note = ("flat" if g["flat"] else "GROWING") if g["judged"] else "context"
        lines.append(
            f"  {name:<10} {g['base_mib']:>8.1f} -> {g['last_mib']:>8.1f} MiB"
            f"  {g['growth_mib']:+7.1f} MiB {g['growth_pct']:+6.1f} %"
            f"  {g['slope_mib_per_round']:+6.2f} MiB/round"
            f"  (PSS {g['pss_base_mib']:.1f} -> {g['pss_last_mib']:.1f})  {note}"
        )
    lines.append(f"  verdict: {'flat' if v['flat'] else 'NOT flat'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


async def run_variant(opts: SoakOptions, ctx: PhaseContext, variant: str) -> Json:
    quiet = wait_for_quiet(opts.quiet_wait)
    say(f"--- {ctx.backend}, {variant}: {opts.rounds} rounds of {opts.tasks} tasks")
    async with ctx.stack(f"soak_{variant}", workers=True) as stack:
        soak = Soak(opts, ctx, stack, variant)
        started = sample_memory(stack, ctx.provider.pgid())
        print(f"\n{ctx.backend}, {variant}:\n{table_header(list(started))}", flush=True)
        print(table_row("start", started), flush=True)
        rounds: list[Json] = []
        for rnd in range(1, opts.rounds + 1):
            rounds.append(await run_round(soak, rnd))
            print(table_row(str(rnd), rounds[-1]["memory"], rounds[-1]), flush=True)
    result = {"before": quiet, "started": started, "rounds": rounds}
    result["verdict"] = verdict(rounds, opts.warmup, opts.threshold_pct)
    print(format_verdict(result), flush=True)
    return result


async def run_backend(opts: SoakOptions, backend: str, root: Path) -> Json:
    provider = bench.open_provider(backend, root / backend, opts.bench)
    ctx = PhaseContext(backend, provider, root / backend, opts.bench)
    try:
        return {variant: await run_variant(opts, ctx, variant) for variant in opts.variants}
    finally:
        provider.close()


async def run(opts: SoakOptions, root: Path) -> dict[str, Json]:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    return {backend: await run_backend(opts, backend, root) for backend in opts.backends}


def document(opts: SoakOptions) -> Json:
    env = bench.environment(opts.bench)
    soak = {k: v for k, v in dataclasses.asdict(opts).items() if k != "bench"}
    b = opts.bench
    setup = (
        f"{opts.rounds} rounds of {opts.tasks} tasks ({', '.join(opts.variants)}) in batches of"
        f" {b.batch_size}; {b.workers} workers x {b.worker_slots} slots ({b.worker_transport}"
        f" transport); Valkey AOF everysec; PostgreSQL fsync {'on' if b.pg_fsync else 'off'};"
        f" {os.cpu_count()} CPUs"
    )
    return env | {"soak_options": soak, "setup": setup}


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    doc = document(opts)
    try:
        with bench.work_directory(opts.keep) as root, bench._event_loop_runner() as runner:
            results = runner.run(run(opts, root))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; everything was stopped")
        return 130
    except BenchError as exc:
        say(f"failed: {exc}")
        return 1
    flat = all(r["verdict"]["flat"] for variants in results.values() for r in variants.values())
    print(f"\n{doc['setup']}\noverall: {'flat' if flat else 'NOT flat'}")
    if opts.json_out is not None:
        write_json(opts.json_out, doc | {"results": results, "flat": flat})
    return 0


if __name__ == "__main__":
    sys.exit(main())
