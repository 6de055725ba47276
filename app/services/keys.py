"""Every Redis key the system uses, named in one place. Redis holds ids, order and leases only;
all of it can be rebuilt from the database (see Scheduler.rebuild_redis)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "dts"

    def queue(self, task_type: str) -> str:
        """ZSET of ready task ids of one type; lower score runs first (priority, then FIFO)."""
        return f"{self.prefix}:queue:{task_type}"

    def wake(self, task_type: str) -> str:
        """LIST of wake-up tokens that idle workers BLPOP on; hints only, never the work itself."""
        return f"{self.prefix}:wake:{task_type}"

    @property
    def active(self) -> str:
        """ZSET of claimed task ids scored by lease deadline (ms, Redis clock)."""
        return f"{self.prefix}:active"

    @property
    def owners(self) -> str:
        """HASH task id -> worker id holding the lease."""
        return f"{self.prefix}:owners"

    @property
    def delayed(self) -> str:
        """ZSET of '<task_type> <priority> <task_id>' scored by the time (ms) it becomes ready."""
        return f"{self.prefix}:delayed"

    @property
    def epoch(self) -> str:
        """Set once the queues were built from the database; its absence means Redis lost data."""
        return f"{self.prefix}:epoch"

    @property
    def sweeper_lock(self) -> str:
        return f"{self.prefix}:lock:sweeper"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel telling workers to stop a running task."""
        return f"{self.prefix}:cancel"

    def rate_limit(self, scope: str, identity: str) -> str:
        """HASH {tokens, at_ms}: one caller's token bucket for one scope (lua/ratelimit.lua)."""
        return f"{self.prefix}:ratelimit:{scope}:{identity}"

    def queue_pattern(self) -> str:
        return f"{self.prefix}:queue:*"
