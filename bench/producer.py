#!/usr/bin/env python3
"""Submissions per second through the Python client's batching producer (dts_client).

    python bench/producer.py [--backend sqlite|postgres] [--tasks 100000] [--max-batch 500]
        [--linger-ms 5] [--in-flight 2] [--json bench/results/producer.json]

A private stack started by bench.py's machinery (Valkey with AOF everysec, a fresh database,
the API under uvicorn, no workers: pure admission). Two measurements side by side, each on its
own fresh stack:

  raw       bench.py's batch phase: ready-made JSON bodies of --max-batch tasks through httpx,
            --in-flight requests at a time (what the API can take).
  producer  `client.producer(max_batch, linger_ms)` fed `p.submit("echo", {"n": n})` --tasks
            times from one thread: each submission validated, given an id, batched, sent from a
            background thread, and its future resolved with the created task.

The rate is tasks over the time from the first submission until the last future is resolved;
every task must be stored (pending) for the run to count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]  # run as a script: app and bench.py

import bench  # noqa: E402
from app.models.task import TaskPublic  # noqa: E402
from dts_client import Client  # noqa: E402

Json = dict[str, Any]


@dataclass(frozen=True)
class ProducerOptions:
    backend: str
    tasks: int
    max_batch: int
    linger_ms: float
    in_flight: int
    quiet_wait: float
    json_out: Path | None
    keep: bool
    bench: bench.Options


def parse_args(argv: Sequence[str] | None = None) -> ProducerOptions:
    p = argparse.ArgumentParser(description="Submissions/s through dts_client's producer.")
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--tasks", type=bench._positive_int, default=100_000)
    p.add_argument("--max-batch", type=bench._positive_int, default=500)
    p.add_argument("--linger-ms", type=float, default=5.0)
    p.add_argument("--in-flight", type=bench._positive_int, default=2)
    p.add_argument("--quiet-wait", type=float, default=10.0, help="see bench.py")
    p.add_argument("--json", dest="json_out", type=Path, help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args(argv)
    stack_args = ["--backend", args.backend, "--batch-size", str(args.max_batch)]
    stack_args += ["--batch-concurrency", str(args.in_flight), "--submit-tasks", str(args.tasks)]
    options = replace(bench.parse_args(stack_args), phases=[], json_out=None, keep=args.keep)
    return ProducerOptions(
        backend=args.backend,
        tasks=args.tasks,
        max_batch=args.max_batch,
        linger_ms=args.linger_ms,
        in_flight=args.in_flight,
        quiet_wait=args.quiet_wait,
        json_out=args.json_out,
        keep=args.keep,
        bench=options,
    )


def produce(api_url: str, opts: ProducerOptions) -> tuple[float, list[TaskPublic]]:
    """Seconds from the first submit to the last resolved future, and the created tasks."""
    with Client(api_url) as client:
        started = time.perf_counter()
        with client.producer(opts.max_batch, opts.linger_ms, max_in_flight=opts.in_flight) as p:
            futures: list[Future[TaskPublic]] = [
                p.submit("echo", {"n": n}) for n in range(opts.tasks)
            ]
        seconds = time.perf_counter() - started
    return seconds, [f.result(timeout=0) for f in futures]


def _result(accepted: int, stored: int, seconds: float, cpu: Json) -> Json:
    return {
        "accepted": accepted,
        "stored_pending": stored,
        "seconds": round(seconds, 3),
        "tasks_per_s": round(accepted / seconds, 1),
        "client_cpu_us_per_task": round(1e6 * cpu["cpu_s"]["bench client"] / accepted, 1),
        "api_cpu_us_per_task": round(1e6 * cpu["cpu_s"].get("api", 0.0) / accepted, 1),
        "cpu": cpu,
    }


async def count_pending(client: httpx.AsyncClient, expected: int) -> int:
    """`expected` when exactly that many tasks are pending, else the API's count. The list's
    `total` is exact only up to 10,000 past its offset, and bench.count_tasks counts on 10,000
    at a time (a million pending: a hundred ever deeper offsets), so probe by offset first: a
    task at `expected - 1` and none at `expected`."""

    async def present(offset: int) -> bool:
        params: dict[str, str | int] = {"status": "pending", "limit": 1, "offset": offset}
        response = await client.get("/api/tasks", params=params)
        response.raise_for_status()
        return bool(response.json()["tasks"])

    if await present(expected - 1) and not await present(expected):
        return expected
    return await bench.count_tasks(client, "pending")


async def measure(ctx: bench.PhaseContext, opts: ProducerOptions, kind: str) -> Json:
    ctx.attempt += 1  # a fresh database for each measurement
    async with ctx.stack(kind, workers=False) as stack:
        bench.wait_for_quiet(opts.quiet_wait)
        meter = ctx.meter(stack)
        if kind == "raw":
            sent = await bench.submit_batches(
                stack.client, opts.tasks, opts.max_batch, opts.in_flight
            )
            accepted, seconds = sent.check("raw").accepted, sent.seconds
        else:
            seconds, tasks = await asyncio.to_thread(produce, stack.api_url, opts)
            accepted = len({t.task_id for t in tasks})
        cpu = meter.stop()
        stored = await count_pending(stack.client, opts.tasks)
    if stored != opts.tasks or accepted != opts.tasks:
        raise bench.BenchError(f"{kind}: {accepted} accepted, {stored} stored of {opts.tasks}")
    bench.say(f"{kind}: {accepted} in {seconds:.2f} s = {accepted / seconds:.0f}/s")
    return _result(accepted, stored, seconds, cpu)


async def run(opts: ProducerOptions, root: Path) -> Json:
    provider = bench.open_provider(opts.backend, root / "db", opts.bench)
    ctx = bench.PhaseContext(backend=opts.backend, provider=provider, root=root, opts=opts.bench)
    try:
        raw = await measure(ctx, opts, "raw")
        producer = await measure(ctx, opts, "producer")
    finally:
        ctx.provider.close()
    ratio = producer["tasks_per_s"] / raw["tasks_per_s"]
    return {"raw": raw, "producer": producer, "producer_vs_raw": round(ratio, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    document: Json = {
        **bench.environment(opts.bench),
        "setup": (
            f"{opts.tasks} echo tasks, max_batch {opts.max_batch}, linger {opts.linger_ms:g} ms,"
            f" {opts.in_flight} in flight, {opts.backend}, no workers, {os.cpu_count()} CPUs"
        ),
    }
    try:
        with bench.work_directory(opts.keep) as root:
            results = asyncio.run(run(opts, root))
    except bench.BenchError as exc:
        bench.say(f"failed: {exc}")
        return 1
    print(document["setup"])
    for kind in ("raw", "producer"):
        row = results[kind]
        print(
            f"{kind:9} {row['tasks_per_s']:>10,.0f} tasks/s  client {row['client_cpu_us_per_task']}"
            f" us/task  api {row['api_cpu_us_per_task']} us/task"
        )
    if opts.json_out is not None:
        bench.write_json(opts.json_out, {**document, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
