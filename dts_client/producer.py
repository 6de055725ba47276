"""A batching producer: `submit` returns a future at once; a background thread gathers the
submissions into POST /api/tasks/batch requests of up to `max_batch` tasks, waiting at most
`linger_ms` for a batch to fill (Kafka's linger.ms), with `max_in_flight` requests at a time.

Each batch is all-or-nothing on the server, so one refused batch fails the futures of its tasks
only. Specs are validated in `submit`, so a bad one is refused there, alone, instead of taking
its whole batch down. Every task gets its id in `submit`: a batch sent again after a lost
connection is answered with the tasks it already created."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from app.models.task import TaskCreate, TaskPublic
from dts_client import operations as ops

if TYPE_CHECKING:
    from dts_client.client import Client

# Submissions waiting to be sent, in batches: beyond this `submit` blocks (back-pressure), so a
# producer faster than the API does not grow without bound.
PENDING_BATCHES = 4

Item = tuple[TaskCreate, "Future[TaskPublic]"]


class Settable(Protocol):
    """What settle needs of a future: concurrent.futures' and asyncio's both have it."""

    def done(self) -> bool: ...
    def set_result(self, result: TaskPublic, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


def settle(futures: Sequence[Settable], outcome: Sequence[TaskPublic] | BaseException) -> None:
    """Each future gets its task, or the batch's error. A future its caller cancelled is
    skipped: setting it would raise and leave the rest of the batch unanswered."""
    if isinstance(outcome, BaseException):
        for future in futures:
            if not future.done():
                future.set_exception(outcome)
        return
    for future, task in zip(futures, outcome, strict=True):
        if not future.done():
            future.set_result(task)


class ProducerClosed(RuntimeError):
    pass


class Producer:
    def __init__(
        self, client: Client, *, max_batch: int = 500, linger_ms: float = 5, max_in_flight: int = 2
    ) -> None:
        if max_batch < 1 or max_in_flight < 1 or linger_ms < 0:
            raise ValueError("max_batch and max_in_flight must be >= 1 and linger_ms >= 0")
        self._client = client
        self.max_batch, self.linger = max_batch, linger_ms / 1000
        self._pending: list[Item] = []
        self._limit = max_batch * PENDING_BATCHES
        self._changed = threading.Condition()
        self._in_flight = threading.Semaphore(max_in_flight)
        self._unsent = 0  # taken from _pending and not answered yet
        self._closed = False
        self._flushing = 0  # callers in flush(): send what is there without lingering
        self._sender = ThreadPoolExecutor(max_in_flight, thread_name_prefix="dts-producer-send")
        self._collector = threading.Thread(target=self._collect, name="dts-producer", daemon=True)
        self._collector.start()

    def submit(
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
    ) -> Future[TaskPublic]:
        """Queue one task (Client.submit's parameters); the future holds the created task, or
        the error of its batch. Invalid is raised here for a spec the API would refuse."""
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
        future: Future[TaskPublic] = Future()
        with self._changed:
            while len(self._pending) >= self._limit and not self._closed:
                self._changed.wait()
            if self._closed:
                raise ProducerClosed("submit after the producer was closed")
            self._pending.append((spec, future))
            if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
                self._changed.notify_all()
        return future

    def flush(self) -> None:
        """Until everything submitted so far is answered."""
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                self._changed.wait_for(lambda: not self._pending and self._unsent == 0)
            finally:
                self._flushing -= 1

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._collector.join()
        self._sender.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _collect(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._in_flight.acquire()
            self._sender.submit(self._send, batch)

    def _next_batch(self) -> list[Item] | None:
        """The next batch: full, or what arrived within `linger` of its first item, or what is
        left when closing. None when closed and empty."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending or self._closed)
            if not self._pending:
                return None
            deadline = time.monotonic() + self.linger
            while len(self._pending) < self.max_batch and not (self._closed or self._flushing):
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            self._unsent += len(batch)
            self._changed.notify_all()  # room for blocked submitters
            return batch

    def _send(self, batch: list[Item]) -> None:
        futures = [future for _, future in batch]
        try:
            tasks = self._client._driver.run(ops.submit_many([spec for spec, _ in batch]))
        except Exception as exc:  # every future must learn the outcome, whatever it is
            settle(futures, exc)
        else:
            settle(futures, tasks)
        finally:
            self._in_flight.release()
            with self._changed:
                self._unsent -= len(batch)
                self._changed.notify_all()
