"""Worker health: resource usage for heartbeats, and the lease keeper.

The lease keeper renews the Redis leases of this worker's tasks from its own thread with its own
Redis connection, so neither a CPU-bound handler holding the GIL in bursts nor a handler that
blocks the event loop can make a live task look dead to the sweeper."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import psutil
import redis
import structlog

from app.models.worker import SystemInfo
from app.services.keys import RedisKeys
from app.services.message_queue import LUA_DIR

log = structlog.get_logger(__name__)


HIGH_CPU_PERCENT = 90.0


def claim_budget(
    *,
    free_slots: int,
    max_slots: int,
    cpu_percent: float | None,
    high_cpu_percent: float = HIGH_CPU_PERCENT,
) -> int:
    """How many tasks to claim now. Workers pull, so load balancing happens here: a worker takes
    at most its free slots (no hoarding), and while its machine is above HIGH_CPU_PERCENT it
    fills only half of its slots, leaving the work to less loaded workers."""
    cap = max_slots
    if cpu_percent is not None and cpu_percent >= high_cpu_percent:
        cap = max(1, max_slots // 2)
    running = max_slots - free_slots
    return max(0, min(free_slots, cap - running))


class CpuSampler:
    """psutil measures CPU between two calls; one owner of those calls keeps the window sane.
    `percent` is the machine's (for heartbeats), `process_percent` this worker process's own, in
    percent of one core: the claim throttle reacts to the worker being busy, not to whatever
    else shares the machine (a benchmark client, the database)."""

    def __init__(self) -> None:
        self.percent: float | None = None
        self.process_percent: float | None = None
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # starts the first windows
        self._process.cpu_percent(interval=None)

    def sample(self) -> float:
        self.percent = psutil.cpu_percent(interval=None)
        self.process_percent = self._process.cpu_percent(interval=None)
        return self.percent


def system_info(cpu: CpuSampler) -> SystemInfo:
    return SystemInfo(
        cpu_usage=cpu.percent if cpu.percent is not None else cpu.sample(),
        memory_usage=psutil.virtual_memory().percent,
        disk_usage=psutil.disk_usage("/").percent,
    )


class LeaseKeeper(threading.Thread):
    def __init__(
        self,
        *,
        redis_url: str,
        keys: RedisKeys,
        lease_seconds: float,
        renew_every: float,
        held: Callable[[], Sequence[tuple[str, str]]],
        cpu: CpuSampler,
    ) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.renew = self.client.register_script((LUA_DIR / "renew.lua").read_text())
        self.keys = keys
        self.lease_ms = int(lease_seconds * 1000)
        self.interval = renew_every
        self.held = held
        self.cpu = cpu
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.renew_now()
            self.cpu.sample()

    def renew_now(self) -> None:
        leases = self.held()
        if not leases:
            return
        try:
            lost = self.renew(
                keys=[self.keys.active, self.keys.owners],
                args=[self.lease_ms, *(x for lease in leases for x in lease)],
            )
        except redis.RedisError as exc:
            log.warning("lease.renew_failed", error=str(exc))
            return
        if lost:
            # The database decides whether our report still counts; we only note it. Routine
            # right after a start or a report (the lease changed hands while this was in flight).
            log.debug("lease.not_held", task_ids=[i.decode() for i in lost])

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        self.client.close()
