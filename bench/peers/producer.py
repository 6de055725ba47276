#!/usr/bin/env python3
"""Enqueue no-op tasks through a peer's own library call, in this process, and time it.

    python bench/peers/producer.py celery send --count 3000 [--threads 16] --out FILE
    python bench/peers/producer.py dramatiq openloop --rate 200 --duration 20 --out FILE

``send`` enqueues --count tasks as fast as --threads threads can (``task.delay()`` /
``actor.send()``); ``openloop`` sends at --rate per second by the clock, never waiting for the
workers. Before timing, --warmup tasks numbered -1, -2, ... open the broker connection (and tell
bench/side_by_side.py when the workers are ready). BENCH_REDIS_URL and BENCH_RECORD_DIR come
from the environment. The figures go to --out as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: `peers`

Send = Callable[[int, float], None]
Json = dict[str, Any]
PEERS = ("celery", "dramatiq")
MAX_SECONDS = 600.0  # no send loop outlives this, whatever the broker does


def load_send(peer: str) -> Send:
    module = importlib.import_module(f"peers.{peer}_app")
    send: Send = module.send
    return send


def warm_up(send: Send, count: int) -> None:
    for k in range(1, count + 1):
        send(-k, time.time())


class Lanes:
    """Threads that take task numbers from one shared range until it is used up."""

    def __init__(self, send: Send, first: int, count: int) -> None:
        self.send = send
        self.numbers = iter(range(first, first + count))
        self.lock = threading.Lock()  # next() on a shared iterator is not atomic by contract
        self.errors: Counter[str] = Counter()
        self.first_error = ""
        self.deadline = time.monotonic() + MAX_SECONDS

    def _next(self) -> int | None:
        with self.lock:
            return next(self.numbers, None)

    def lane(self) -> None:
        while (n := self._next()) is not None and time.monotonic() < self.deadline:
            try:
                self.send(n, time.time())
            except Exception as exc:  # a failed send is a figure to report, not a crash
                self.errors[type(exc).__name__] += 1
                self.first_error = self.first_error or repr(exc)[:300]

    def run(self, threads: int) -> float:
        """Seconds to send everything with ``threads`` threads (1: this thread, no hand-off)."""
        started = time.perf_counter()
        if threads == 1:
            self.lane()
        else:
            pool = [threading.Thread(target=self.lane, daemon=True) for _ in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join(MAX_SECONDS)
        return time.perf_counter() - started


def send_many(send: Send, count: int, threads: int, first: int) -> Json:
    lanes = Lanes(send, first, count)
    seconds = lanes.run(threads)
    sent = count - sum(lanes.errors.values())
    return {
        "tasks": count,
        "threads": threads,
        "sent": sent,
        "errors": dict(lanes.errors),
        "first_error": lanes.first_error,
        "seconds": round(seconds, 3),
        "tasks_per_s": round(sent / seconds, 1) if seconds > 0 else None,
    }


def open_loop(send: Send, rate: float, duration: float) -> Json:
    """Send at ``rate``/s by the clock; a send that is late counts its lateness (max_lag)."""
    total = int(rate * duration)
    t0 = time.perf_counter() + 0.05
    max_lag = 0.0
    for n in range(total):
        due = t0 + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        max_lag = max(max_lag, -delay)
        send(n, time.time())
    elapsed = time.perf_counter() - t0
    return {
        "target_rate": rate,
        "duration": duration,
        "sent": total,
        "achieved_rate": round(total / elapsed, 1) if elapsed > 0 else None,
        "max_send_lag_ms": round(max_lag * 1000, 1),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Enqueue no-op tasks through a peer's library.")
    p.add_argument("peer", choices=PEERS)
    p.add_argument("mode", choices=["send", "openloop"])
    p.add_argument("--count", type=int, default=0, help="send: tasks to enqueue")
    p.add_argument("--threads", type=int, default=1, help="send: producer threads")
    p.add_argument("--first", type=int, default=0, help="send: number of the first task")
    p.add_argument("--rate", type=float, default=200.0, help="openloop: tasks per second")
    p.add_argument("--duration", type=float, default=20.0, help="openloop: seconds")
    p.add_argument("--warmup", type=int, default=1, help="untimed tasks sent first")
    p.add_argument("--out", type=Path, required=True, help="write the figures here (JSON)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    send = load_send(args.peer)
    warm_up(send, args.warmup)
    if args.mode == "send":
        result = send_many(send, args.count, max(1, args.threads), args.first)
    else:
        result = open_loop(send, args.rate, args.duration)
    args.out.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
