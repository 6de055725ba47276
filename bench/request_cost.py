#!/usr/bin/env python3
"""CPU of one API request in process, without uvicorn or sockets.

    python bench/request_cost.py [--requests 3000] [--concurrency 16]
        [--path /api/tasks|/health/live|...] [--profile]

The app (create_app, lifespan included) on a fresh SQLite file and a private Valkey, called as
an ASGI application by --concurrency coroutines: POST /api/tasks with a small echo task, or GET
for any other --path. Prints the requests per second and this process's CPU per request (the
event loop's thread and the database driver's); --profile adds cProfile's top functions by own
time (the profiler roughly doubles the cost; the shares are what to read). What a request costs
the API before HTTP parsing, e.g. FastAPI's routing and dependency resolution
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.main import create_app
from app.utils.embedded_servers import ValkeyServer

BODY = orjson.dumps({"task_type": "echo", "payload": {"hello": "world"}})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--path", default="/api/tasks")
    p.add_argument("--profile", action="store_true")
    return p.parse_args()


def scope_for(path: str) -> dict[str, Any]:
    method = "POST" if path == "/api/tasks" else "GET"
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if method == "POST":
        headers.append((b"content-length", str(len(BODY)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, path: str) -> int:
    """One request; its status."""
    body = BODY if path == "/api/tasks" else b""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the request runs
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app({**scope_for(path), "state": {}}, receive, send)
    return status


async def measure(args: argparse.Namespace, root: Path) -> None:
    valkey = ValkeyServer(root / "valkey", None)
    valkey.start()
    try:
        settings = Settings(
            _env_file=None,
            database_url=f"sqlite:///{root / 'api.db'}",
            redis_url=valkey.url,
            api_host="127.0.0.1",
            log_level="WARNING",
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            structlog.configure(
                wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
            )
            for _ in range(200):  # warm-up: caches, connections
                await call(app, args.path)
            profiler = cProfile.Profile() if args.profile else None
            per_worker = args.requests // args.concurrency
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            statuses = await asyncio.gather(
                *(_loop(app, args.path, per_worker) for _ in range(args.concurrency))
            )
            if profiler is not None:
                profiler.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        done = per_worker * args.concurrency
        print(f"statuses: {sorted(set().union(*statuses))}")
        print(f"{args.path}: {done / wall:.0f}/s, CPU per request {cpu / done * 1e6:.0f} us")
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        valkey.stop()


async def _loop(app: Any, path: str, count: int) -> set[int]:
    return {await call(app, path) for _ in range(count)}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
