"""The blocking client. Each method runs one operation of dts_client/operations.py; AsyncClient
(dts_client/aio.py) runs the same operations, and tests/test_client.py checks that the two have
the same methods with the same parameters."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, overload

import httpx

from app.models.auth import KeyCreated, KeyPublic, Scope
from app.models.logs import LogLine, TaskLogs
from app.models.task import QueueInfo, TaskCreate, TaskGraph, TaskPublic, TaskStatus
from app.models.worker import WorkerPublic
from dts_client import operations as ops
from dts_client.config import resolve
from dts_client.drivers import DEFAULT_TIMEOUT, SyncDriver
from dts_client.retry import RetryPolicy

if TYPE_CHECKING:
    from app.models.schedule import SchedulePublic
    from dts_client.producer import Producer

Spec = TaskCreate | Mapping[str, Any]


class Client:
    """`Client(api_url=None, api_key=None)`: API_URL and API_KEY from the environment or `.env`
    when not given (default http://localhost:8000, no key). `http`: an httpx.Client of your own
    (its base_url is used)."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.endpoint = resolve(api_url, api_key)
        self.http = http or httpx.Client(base_url=self.endpoint.api_url, timeout=timeout)
        self._owns_http = http is None
        self._driver = SyncDriver(self.http, retry or RetryPolicy(), self.endpoint)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- tasks ------------------------------------------------------------------------------ #

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
    ) -> TaskPublic:
        """Submit one task; without `task_id` one is made up first, so a retried send cannot
        create the task twice."""
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
        return self._driver.run(ops.submit(spec))

    def submit_many(self, specs: Iterable[Spec]) -> builtins.list[TaskPublic]:
        """One POST /api/tasks/batch: all admitted or none (at most MAX_BATCH_SIZE, 1000 by
        default). Specs are TaskCreate or dicts of its fields; ids are made up where missing."""
        checked = [ops.as_spec(spec, i) for i, spec in enumerate(specs)]
        return self._driver.run(ops.submit_many(checked))

    def get(self, task_id: str) -> TaskPublic:
        return self._driver.run(ops.get(task_id))

    # A str is also an Iterable[str]: the first overload wins for it, as intended.
    @overload
    def wait(  # type: ignore[overload-overlap]
        self,
        task_ids: str,
        timeout: float | None = None,
        poll: float | None = None,
        *,
        raise_on_failure: bool = False,
        progress: ops.Progress | None = None,
    ) -> TaskPublic: ...

    @overload
    def wait(
        self,
        task_ids: Iterable[str],
        timeout: float | None = None,
        poll: float | None = None,
        *,
        raise_on_failure: bool = False,
        progress: ops.Progress | None = None,
    ) -> builtins.list[TaskPublic]: ...

    def wait(
        self,
        task_ids: str | Iterable[str],
        timeout: float | None = None,
        poll: float | None = None,
        *,
        raise_on_failure: bool = False,
        progress: ops.Progress | None = None,
    ) -> TaskPublic | builtins.list[TaskPublic]:
        """Until the task (or every task) is final. `raise_on_failure`: TaskFailed for the first
        one found failed or cancelled. WaitTimeout after `timeout` seconds. `progress(done,
        total)` is called after each round of polling."""
        ids = [task_ids] if isinstance(task_ids, str) else builtins.list(task_ids)
        op = ops.wait(
            ids, timeout=timeout, poll=poll, raise_on_failure=raise_on_failure, progress=progress
        )
        tasks = self._driver.run(op)
        return tasks[0] if isinstance(task_ids, str) else tasks

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's result once it completed; TaskFailed if it failed or was cancelled."""
        return self._driver.run(ops.result(task_id, timeout=timeout))

    def list(
        self,
        status: TaskStatus | str | None = None,
        task_type: str | None = None,
        worker_id: str | None = None,
        *,
        limit: int | None = None,
        page_size: int = ops.DEFAULT_PAGE,
    ) -> Iterator[TaskPublic]:
        """Every matching task, newest first, fetched a page at a time as you iterate."""
        op = ops.list_tasks(
            status=status,
            task_type=task_type,
            worker_id=worker_id,
            limit=limit,
            page_size=page_size,
        )
        return self._driver.iterate(op)

    def cancel(self, task_id: str) -> TaskPublic:
        return self._driver.run(ops.cancel(task_id))

    def retry(self, task_id: str) -> TaskPublic:
        return self._driver.run(ops.retry(task_id))

    def logs(
        self,
        task_id: str,
        *,
        attempt: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> TaskLogs:
        return self._driver.run(ops.logs(task_id, attempt=attempt, after=after, limit=limit))

    def follow_logs(
        self, task_id: str, *, attempt: int | None = None, poll: float = ops.LOG_POLL
    ) -> Iterator[LogLine]:
        """Each log line as it is written, until the task is final."""
        return self._driver.iterate(ops.follow_logs(task_id, attempt=attempt, poll=poll))

    def graph(self, task_id: str) -> TaskGraph:
        return self._driver.run(ops.graph(task_id))

    # -- workers, queues, statistics ----------------------------------------------------------- #

    def workers(self) -> builtins.list[WorkerPublic]:
        return self._driver.run(ops.workers())

    def queues(self) -> builtins.list[QueueInfo]:
        return self._driver.run(ops.queues())

    def overview(self) -> dict[str, Any]:
        return self._driver.run(ops.overview())

    # -- API keys -------------------------------------------------------------------------- #

    def create_key(
        self,
        name: str,
        scopes: Sequence[Scope | str],
        *,
        expires_at: datetime | None = None,
        worker_id: str | None = None,
    ) -> KeyCreated:
        return self._driver.run(
            ops.create_key(name, scopes, expires_at=expires_at, worker_id=worker_id)
        )

    def keys(self) -> builtins.list[KeyPublic]:
        return self._driver.run(ops.keys())

    def revoke_key(self, key_id: str) -> None:
        self._driver.run(ops.revoke_key(key_id))

    # -- schedules ------------------------------------------------------------------------- #

    def schedules(self) -> builtins.list[SchedulePublic]:
        from dts_client import schedule_ops

        return self._driver.run(schedule_ops.schedules())

    def get_schedule(self, schedule_id: str) -> SchedulePublic:
        from dts_client import schedule_ops

        return self._driver.run(schedule_ops.get_schedule(schedule_id))

    def create_schedule(
        self,
        schedule_id: str,
        task_type: str,
        payload: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SchedulePublic:
        """`options`: `cron` or `interval_seconds`, and any other field of ScheduleCreate;
        `priority`, `timeout` and `max_retries` are the created tasks'."""
        from dts_client import schedule_ops

        spec = schedule_ops.schedule_spec(schedule_id, task_type, payload, options)
        return self._driver.run(schedule_ops.create_schedule(spec))

    def update_schedule(self, schedule_id: str, **changes: Any) -> SchedulePublic:
        from dts_client import schedule_ops

        return self._driver.run(schedule_ops.update_schedule(schedule_id, changes))

    def delete_schedule(self, schedule_id: str) -> None:
        from dts_client import schedule_ops

        self._driver.run(schedule_ops.delete_schedule(schedule_id))

    def trigger_schedule(self, schedule_id: str) -> TaskPublic:
        from dts_client import schedule_ops

        return self._driver.run(schedule_ops.trigger_schedule(schedule_id))

    # -- batching producer ----------------------------------------------------------------- #

    def producer(
        self, max_batch: int = 500, linger_ms: float = 5, *, max_in_flight: int = 2
    ) -> Producer:
        """A producer that sends `submit`s in batches from a background thread; use it as a
        context manager (leaving it sends what is left and waits for the answers)."""
        from dts_client.producer import Producer

        return Producer(self, max_batch=max_batch, linger_ms=linger_ms, max_in_flight=max_in_flight)
