"""The client host's steady load: batches of tasks at a fixed offered rate through the load
balancer, open loop (a slow answer does not slow the offer), each batch resent with the same
task ids until it is accepted (an identical resubmission is answered with the tasks, never
duplicated). Runs until SIGTERM, then waits for the batches still being resent.

    python -m tests.multihost.load --url http://10.232.1.11:8000 --rate 200 --out load.jsonl

Writes one JSON line per second `{"t", "accepted", "errors"}` and, at the end,
`{"done": true, "accepted": N, "given_up": [ids]}`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

RESEND_FOR = 120.0  # seconds a batch is resent before it is given up (and reported)


class Load:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.accepted = 0
        self.errors = 0
        self.given_up: list[str] = []
        self.sent = 0
        headers = {"X-API-Key": options.key} if options.key else {}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.http = httpx.AsyncClient(
            base_url=options.url, headers=headers, timeout=10, limits=limits
        )

    def batch(self) -> list[dict[str, Any]]:
        first, self.sent = self.sent, self.sent + self.options.batch
        task = {"task_type": "sleep", "payload": {"parameters": {"seconds": self.options.task}}}
        return [{"task_id": f"{self.options.prefix}-{n}", **task} for n in range(first, self.sent)]

    async def deliver(self, tasks: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + RESEND_FOR
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                answer = await self.http.post("/api/tasks/batch", json={"tasks": tasks})
                if answer.status_code in (200, 201):
                    self.accepted += len(tasks)
                    return
            self.errors += 1
            await asyncio.sleep(0.2)
        self.given_up += [t["task_id"] for t in tasks]

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.options.batch / self.options.rate
        in_flight: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        next_send = next_report = loop.time()
        with Path(self.options.out).open("ab", buffering=0) as out:
            while not stop.is_set():
                now = loop.time()
                if now >= next_send:
                    job = asyncio.create_task(self.deliver(self.batch()))
                    in_flight.add(job)
                    job.add_done_callback(in_flight.discard)
                    next_send += interval
                if now >= next_report:
                    line = {"t": time.time(), "accepted": self.accepted, "errors": self.errors}
                    out.write(orjson.dumps(line) + b"\n")
                    next_report += 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, min(next_send, next_report) - now))
            if in_flight:
                await asyncio.wait(in_flight)
            end = {"done": True, "accepted": self.accepted, "given_up": self.given_up}
            out.write(orjson.dumps(end) + b"\n")
        await self.http.aclose()


async def main(options: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Load(options).run(stop)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default=os.environ.get("API_KEY", ""))
    parser.add_argument("--rate", type=float, default=200, help="tasks per second offered")
    parser.add_argument("--batch", type=int, default=20, help="tasks per request")
    parser.add_argument("--task", type=float, default=0.1, help="seconds each task sleeps")
    parser.add_argument("--prefix", default="mh")
    parser.add_argument("--out", required=True)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
