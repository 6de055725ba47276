"""The batching producer for asyncio (dts_client/producer.py is the threaded one, with the
reasoning): `await p.submit(...)` queues a task and answers a future; a collector task sends
POST /api/tasks/batch requests of up to `max_batch` tasks, `max_in_flight` at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from app.models.task import TaskCreate, TaskPublic
from dts_client import operations as ops
from dts_client.producer import PENDING_BATCHES, ProducerClosed, settle

if TYPE_CHECKING:
    from dts_client.aio import AsyncClient

Item = tuple[TaskCreate, "asyncio.Future[TaskPublic]"]


class AsyncProducer:
    def __init__(
        self,
        client: AsyncClient,
        *,
        max_batch: int = 500,
        linger_ms: float = 5,
        max_in_flight: int = 2,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1 or linger_ms < 0:
            raise ValueError("max_batch and max_in_flight must be >= 1 and linger_ms >= 0")
        self._client = client
        self.max_batch, self.linger = max_batch, linger_ms / 1000
        self._queue: asyncio.Queue[Item] = asyncio.Queue(max_batch * PENDING_BATCHES)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._sends: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        self._collector = asyncio.create_task(self._collect(), name="dts-producer")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def submit(
        self,
        task_type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        priority: int | None = None,
        dependencies: Iterable[str] = (),
        timeout: int | None = None,
        max_retries: int | None = None,
        delay_seconds: float | None = None,
        scheduled_at: datetime | None = None,
    ) -> asyncio.Future[TaskPublic]:
        if self._closed or self._collector is None:
            raise ProducerClosed("use the producer as `async with client.producer() as p`")
        spec = ops.task_spec(
            task_type,
            payload,
            task_id=task_id,
            priority=priority,
            dependencies=dependencies,
            timeout=timeout,
            max_retries=max_retries,
            delay_seconds=delay_seconds,
            scheduled_at=scheduled_at,
        )
        future: asyncio.Future[TaskPublic] = asyncio.get_running_loop().create_future()
        await self._queue.put((spec, future))
        return future

    async def flush(self) -> None:
        """Until everything submitted so far is answered."""
        await self._queue.join()

    async def close(self) -> None:
        self._closed = True
        await self.flush()
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        await asyncio.gather(*self._sends)

    async def _collect(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self._drain(batch)
            if len(batch) < self.max_batch and self.linger > 0:
                # One linger per batch rather than a timed get per item: a timer per task
                # would cost more than the batching saves.
                await asyncio.sleep(self.linger)
                self._drain(batch)
            await self._in_flight.acquire()
            send = asyncio.create_task(self._send(batch))
            self._sends.add(send)
            send.add_done_callback(self._sends.discard)

    def _drain(self, batch: list[Item]) -> None:
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _send(self, batch: list[Item]) -> None:
        futures = [future for _, future in batch]
        try:
            tasks = await self._client._driver.run(ops.submit_many([spec for spec, _ in batch]))
        except Exception as exc:  # every future must learn the outcome, whatever it is
            settle(futures, exc)
        else:
            settle(futures, tasks)
        finally:
            self._in_flight.release()
            for _ in batch:
                self._queue.task_done()
