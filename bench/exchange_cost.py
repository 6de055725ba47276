#!/usr/bin/env python3
"""CPU of the worker protocol's exchange itself, in one process, without HTTP.

    python bench/exchange_cost.py [--tasks 5000] [--batch 10] [--rounds 3]
        [--database-url postgresql://...] [--json bench/results/exchange_cost.json]

Admits --tasks echo tasks into a fresh store (a SQLite file by default), then runs what a
worker's exchanges run (`Scheduler.exchange`): each one reports the previous --batch attempts
completed and starts the next --batch, one transaction each, with a private Valkey for the
leases. Prints the process's CPU (this thread and the database driver's) per exchange and per
task, the best of --rounds runs on fresh stores: how much of a task's cost is ours before any
HTTP, and the figure changes to the store layer are judged by (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from app.config import Settings  # noqa: E402
from app.database.connection import Database  # noqa: E402
from app.models.task import AttemptOutcome, TaskCreate, TaskReport, TaskToRun  # noqa: E402
from app.models.worker import WorkerRegister  # noqa: E402
from app.services.message_queue import RedisQueue  # noqa: E402
from app.services.scheduler import Scheduler  # noqa: E402
from app.services.worker_manager import WorkerManager  # noqa: E402
from app.utils.embedded_servers import ValkeyServer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--batch", type=int, default=10, help="reports and claims per exchange")
    p.add_argument("--rounds", type=int, default=3, help="runs on fresh stores; the best counts")
    p.add_argument("--database-url", help="a PostgreSQL database to use (emptied first)")
    p.add_argument("--json", dest="json_out", type=Path)
    return p.parse_args()


def done(job: TaskToRun) -> TaskReport:
    return TaskReport(
        task_id=job.task_id, attempt=job.attempt, outcome=AttemptOutcome.COMPLETED, result={}
    )


async def one_round(args: argparse.Namespace, root: Path, redis_url: str) -> dict[str, float]:
    url = args.database_url or f"sqlite:///{root / 'exchange.db'}"
    settings = Settings(_env_file=None, database_url=url, redis_url=redis_url)
    db = Database(settings.async_database_url)
    if args.database_url:
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    await db.migrate()
    redis = Redis.from_url(redis_url)
    await redis.flushall()
    queue = RedisQueue(redis, prefix=settings.redis_prefix, lease_seconds=settings.lease_seconds)
    scheduler = Scheduler(settings, db, queue)
    spec = WorkerRegister(worker_id="w1", capabilities=["echo"], max_concurrent_tasks=args.batch)
    await WorkerManager(settings, db).register(spec)
    ids: list[str] = []
    for start in range(0, args.tasks, 500):
        specs = [TaskCreate(task_type="echo") for _ in range(min(500, args.tasks - start))]
        ids += [task.task_id for task, _created in await scheduler.submit_many(specs)]
    exchanges, running = 0, list[TaskToRun]()
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(ids) + args.batch, args.batch):
        answer = await scheduler.exchange(
            "w1", [done(j) for j in running], ids[start:][: args.batch]
        )
        if len(answer.accepted) != len(running):
            raise SystemExit(f"reports refused: {answer.refused_reports}")
        running, exchanges = answer.started, exchanges + 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await db.dispose()
    await redis.aclose()
    return {
        "exchanges": exchanges,
        "cpu_ms_per_exchange": round(cpu / exchanges * 1000, 3),
        "cpu_ms_per_task": round(cpu / args.tasks * 1000, 4),
        "tasks_per_s": round(args.tasks / wall, 1),
    }


async def main() -> None:
    args = parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        valkey = ValkeyServer(Path(tmp) / "valkey", None)
        valkey.start()
        try:
            for n in range(args.rounds):
                root = Path(tmp) / f"round-{n}"
                root.mkdir()
                rounds.append(await one_round(args, root, valkey.url))
                print(f"round {n + 1}: {rounds[-1]}", flush=True)
        finally:
            valkey.stop()
    best = min(rounds, key=lambda r: r["cpu_ms_per_exchange"])
    store = "postgresql" if args.database_url else "sqlite"
    print(f"{store}, {args.batch} per exchange: best {best}")
    if args.json_out:
        out: dict[str, Any] = {"store": store, "batch": args.batch, "best": best, "rounds": rounds}
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
