"""The only work of a peer's no-op task: record when it ran, and read the records back.

Each execution appends one line ``"<n> <sent> <start>\\n"`` (``time.time()`` values: ``sent`` by
the producer just before the library call, ``start`` by the task body) to a file of its own
process, with a single O_APPEND write: a system call of a few microseconds and no network round
trip, so measuring barely slows the peer down. Warm-up tasks have negative numbers and are not
counted. The task does nothing else, so its start is also its completion (to within
microseconds).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

RECORD_DIR_ENV = "BENCH_RECORD_DIR"
REDIS_URL_ENV = "BENCH_REDIS_URL"
_SUFFIX = ".rec"
_fds: dict[int, int] = {}  # pid -> descriptor: a forked worker process must open its own file


def redis_url() -> str:
    """The broker URL chosen by the bench (a private Valkey on a free port)."""
    return os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")


def _descriptor() -> int:
    pid = os.getpid()
    fd = _fds.get(pid)
    if fd is None:
        path = Path(os.environ[RECORD_DIR_ENV]) / f"{pid}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fds[pid] = fd  # two threads racing here open two descriptors: harmless with O_APPEND
    return fd


def record(n: int, sent: float) -> None:
    """The task body: one line, written in one system call (atomic with O_APPEND)."""
    start = time.time()
    os.write(_descriptor(), f"{n} {sent!r} {start!r}\n".encode())


@dataclass(frozen=True)
class Record:
    n: int
    sent: float
    start: float


def _contents(directory: Path) -> list[bytes]:
    """Each file up to its last newline: a line still being written is left for later."""
    found = []
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        data = path.read_bytes()
        found.append(data[: data.rfind(b"\n") + 1])
    return found


def count_records(directory: Path) -> tuple[int, int]:
    """(numbered, warm-up) complete lines so far, without parsing them (polled while running)."""
    numbered = warmup = 0
    for data in _contents(directory):
        negative = data.count(b"\n-") + data.startswith(b"-")
        numbered += data.count(b"\n") - negative
        warmup += negative
    return numbered, warmup


def read_records(directory: Path) -> list[Record]:
    """Every complete numbered line (warm-ups left out)."""
    found: list[Record] = []
    for data in _contents(directory):
        for line in data.decode().splitlines():
            n, sent, start = line.split()
            if int(n) >= 0:
                found.append(Record(int(n), float(sent), float(start)))
    return found
