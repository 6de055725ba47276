"""The message-queue interface and its Redis implementation (Lua scripts in ./lua).

Redis carries ids, order and leases; the database carries everything else. Each move between
Redis structures is one Lua script so that no task is ever in two places or in none."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.models.task import ReadyTask
from app.services.keys import RedisKeys

LUA_DIR = Path(__file__).with_name("lua")
STRICT_PRIORITY_BAND_US = 10**13  # larger than any wait: priority always wins, FIFO within it


# A lease is owned by one attempt: '<worker_id>#<attempt>' ('#' cannot occur in a worker id).
# Attempt 0 is a claim the database has not started yet. Only the owning attempt's messages may
# renew or drop a lease, so a late message from a superseded attempt never frees its successor's.
Lease = tuple[str, str]  # (task_id, token)


def lease_token(worker_id: str, attempt: int) -> str:
    return f"{worker_id}#{attempt}"


def claim_token(worker_id: str) -> str:
    return lease_token(worker_id, 0)


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed task id, with its queue and its score there (to hand it back in place)."""

    task_id: str
    queue_key: str
    score: str


class TaskQueue(Protocol):
    async def enqueue(self, tasks: Sequence[ReadyTask]) -> None: ...
    async def claim(self, worker_id: str, task_types: Sequence[str], count: int) -> list[str]: ...
    async def renew(self, leases: Sequence[Lease]) -> list[str]: ...
    async def release(self, leases: Sequence[Lease]) -> None: ...
    async def requeue(self, task: ReadyTask, token: str = "") -> None: ...
    async def pop_wake(self, task_types: Sequence[str], timeout: float) -> str | None: ...


def aging_band_us(aging_seconds: float) -> int:
    return int(aging_seconds * 1_000_000) if aging_seconds > 0 else STRICT_PRIORITY_BAND_US


def delayed_member(task: ReadyTask) -> str:
    return f"{task.task_type} {task.priority} {task.task_id}"


def _load(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script((LUA_DIR / f"{name}.lua").read_text())


class RedisQueue:
    """TaskQueue on Redis. One instance per process; the client is built by the caller."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "dts",
        lease_seconds: float = 5.0,
        aging_seconds: float = 0,
    ) -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self.lease_ms = int(lease_seconds * 1000)
        self.band_us = aging_band_us(aging_seconds)
        self._scripts = {path.stem: _load(redis, path.stem) for path in LUA_DIR.glob("*.lua")}

    async def enqueue(self, tasks: Sequence[ReadyTask], *, now_us: int | None = None) -> None:
        """Queue ready tasks (delayed ones go to the delayed set). `now_us` overrides the Redis
        clock for the arrival time, which makes ordering tests deterministic."""
        now = datetime.now(UTC)
        later = [t for t in tasks if t.ready_at is not None and t.ready_at > now]
        ready = [t for t in tasks if t.ready_at is None or t.ready_at <= now]
        if later:
            await self.delay(later)
        if not ready:
            return
        types = sorted({t.task_type for t in ready})
        index = {name: i for i, name in enumerate(types)}
        keys = [self.keys.active]
        for name in types:
            keys += [self.keys.queue(name), self.keys.wake(name)]
        args: list[str | int] = [self.band_us, "" if now_us is None else now_us]
        for t in ready:
            args += [index[t.task_type], t.task_id, t.priority]
        await self._scripts["enqueue"](keys=keys, args=args)

    async def delay(self, tasks: Sequence[ReadyTask]) -> None:
        args: list[str | int] = []
        for t in tasks:
            ready_at = t.ready_at or datetime.now(UTC)
            args += [delayed_member(t), int(ready_at.timestamp() * 1000)]
        keys = [self.keys.active, self.keys.owners, self.keys.delayed]
        await self._scripts["delay"](keys=keys, args=args)

    async def claim(self, worker_id: str, task_types: Sequence[str], count: int) -> list[str]:
        return [c.task_id for c in await self.claim_scored(worker_id, task_types, count)]

    async def claim_scored(
        self, worker_id: str, task_types: Sequence[str], count: int
    ) -> list[Claim]:
        if count <= 0 or not task_types:
            return []
        queues = [self.keys.queue(t) for t in task_types]
        keys = [self.keys.active, self.keys.owners, *queues]
        args: list[str | int] = [claim_token(worker_id), count, self.lease_ms]
        flat = [_text(x) for x in await self._scripts["claim"](keys=keys, args=args)]
        return [Claim(i, q, s) for i, s, q in zip(flat[0::3], flat[1::3], flat[2::3], strict=True)]

    async def unclaim(self, worker_id: str, claims: Sequence[Claim]) -> int:
        """Hand claims that could not be started back to their place in their queues."""
        if not claims:
            return 0
        keys = [self.keys.active, self.keys.owners]
        args: list[str] = [claim_token(worker_id)]
        for c in claims:
            task_type = c.queue_key.removeprefix(self.keys.queue(""))
            keys += [c.queue_key, self.keys.wake(task_type)]
            args += [c.task_id, c.score]
        return int(await self._scripts["unclaim"](keys=keys, args=args))

    async def renew(self, leases: Sequence[Lease]) -> list[str]:
        if not leases:
            return []
        keys = [self.keys.active, self.keys.owners]
        args: list[str | int] = [self.lease_ms, *(x for lease in leases for x in lease)]
        return [_text(i) for i in await self._scripts["renew"](keys=keys, args=args)]

    async def hold(self, leases: Sequence[tuple[str, str, str]]) -> None:
        """Lease (task_id, task_type, token) to the attempts the database just started."""
        await self.settle([], leases)

    async def settle(self, released: Sequence[Lease], held: Sequence[tuple[str, str, str]]) -> None:
        """Release leases still owned by their tokens (an empty token: whoever owns it), then
        lease (task_id, task_type, token) to started attempts: one round trip."""
        if not released and not held:
            return
        keys = [self.keys.active, self.keys.owners, *(self.keys.queue(t) for _, t, _ in held)]
        args: list[str | int] = [self.lease_ms, len(released)]
        for lease in released:
            args += lease
        for task_id, _type, token in held:
            args += [task_id, token]
        await self._scripts["settle"](keys=keys, args=args)

    async def is_leased(self, task_ids: Sequence[str]) -> list[bool]:
        scores = await self.redis.zmscore(self.keys.active, list(task_ids))
        return [score is not None for score in scores]

    async def release(self, leases: Sequence[Lease]) -> None:
        """Drop leases still owned by their tokens (an empty token: whoever owns it)."""
        await self.settle(leases, [])

    async def requeue(self, task: ReadyTask, token: str = "") -> None:
        """Queue a task again, unless a lease of another token than `token` holds it now."""
        keys = [
            self.keys.active,
            self.keys.owners,
            self.keys.queue(task.task_type),
            self.keys.wake(task.task_type),
        ]
        args: list[str | int] = [task.task_id, task.priority, self.band_us, token]
        await self._scripts["requeue"](keys=keys, args=args)

    async def promote_due(self, limit: int = 1000) -> int:
        keys = [self.keys.delayed, self.keys.active]
        moved = await self._scripts["promote"](
            keys=keys, args=[self.keys.prefix, self.band_us, limit]
        )
        return int(moved)

    async def expired_leases(self, limit: int = 1000) -> list[tuple[str, str]]:
        flat = await self._scripts["expired"](
            keys=[self.keys.active, self.keys.owners], args=[limit]
        )
        items = [_text(x) for x in flat]
        return list(zip(items[0::2], items[1::2], strict=True))

    async def pop_wake(self, task_types: Sequence[str], timeout: float) -> str | None:
        """Block until a wake-up token arrives for one of the types (returns its list's key), or
        the timeout passes (None)."""
        popped = await self.redis.blpop([self.keys.wake(t) for t in task_types], timeout=timeout)
        return None if popped is None else _text(popped[0])

    async def push_wake(self, key: str) -> None:
        """Give a wake-up token back, for a worker that can use it."""
        await self.redis.lpush(key, "1")

    async def queue_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        prefix_len = len(self.keys.queue(""))
        async for key in self.redis.scan_iter(match=self.keys.queue_pattern(), count=500):
            name = _text(key)
            depths[name[prefix_len:]] = int(await self.redis.zcard(name))
        return depths

    async def restore_leases(self, leases: Sequence[Lease]) -> None:
        """Give running tasks a fresh lease after Redis lost its own (rebuild from the database)."""
        seconds, micros = await self.redis.time()
        deadline = seconds * 1000 + micros // 1000 + self.lease_ms
        async with self.redis.pipeline(transaction=True) as pipe:
            for task_id, token in leases:
                pipe.zadd(self.keys.active, {task_id: deadline}, nx=True)
                pipe.hsetnx(self.keys.owners, task_id, token)
            await pipe.execute()

    async def remove_queued(self, task_type: str, task_ids: Sequence[str]) -> None:
        if task_ids:
            await self.redis.zrem(self.keys.queue(task_type), *task_ids)

    async def forget(self, task_ids: Sequence[str]) -> None:
        """Drop tasks from every ready queue (cancelled while waiting). Entries missed here, like
        delayed ones, are harmless: the database refuses to start a task that is not pending."""
        if not task_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            async for key in self.redis.scan_iter(match=self.keys.queue_pattern(), count=500):
                pipe.zrem(key, *task_ids)
            await pipe.execute()

    async def publish_cancel(self, message: dict[str, Any]) -> None:
        await self.redis.publish(self.keys.cancel_channel, orjson.dumps(message))

    async def queued_ids(self, task_type: str) -> list[str]:
        members = await self.redis.zrange(self.keys.queue(task_type), 0, -1)
        return [_text(i) for i in cast(list[bytes], members)]

    async def is_known(self, tasks: Sequence[ReadyTask]) -> list[bool]:
        """For each task, whether Redis holds it anywhere: its queue, a lease, or the delayed set
        (its member there derives from the task)."""
        lacking = set(await self._missing_positions(tasks))
        return [i not in lacking for i in range(len(tasks))]

    async def missing(self, tasks: Sequence[ReadyTask]) -> list[ReadyTask]:
        """The tasks Redis holds nowhere (see is_known), in the order given."""
        return [tasks[i] for i in await self._missing_positions(tasks)]

    async def _missing_positions(self, tasks: Sequence[ReadyTask]) -> list[int]:
        """known.lua: one round trip, and a reply as short as what is missing. A pipeline of
        three ZSCOREs per task held the event loop about 0.1 ms a task to encode and parse; this
        holds it 1 to 2 µs a task."""
        if not tasks:
            return []
        types = sorted({task.task_type for task in tasks})
        keys = [self.keys.active, self.keys.delayed, *(self.keys.queue(t) for t in types)]
        members = "\n".join(delayed_member(task) for task in tasks)
        found = await self._scripts["known"](keys=keys, args=[len(types), *types, members])
        return [int(position) - 1 for position in found]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
