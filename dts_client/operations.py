"""Every client operation, written once, free of I/O: a generator that yields the HTTP calls
(`Call`), waits (`Pause`) and items (`Emit`) it needs, and receives each call's response body.
`Client` runs them with blocking httpx and `AsyncClient` with async httpx (dts_client/drivers.py),
so the two clients cannot drift apart: they differ only in how a step is carried out.

The rejected alternative, an async core with a blocking wrapper running an event loop per call,
breaks inside a running loop (Jupyter, async web apps) and costs a loop per request."""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.models.auth import KeyCreate, KeyCreated, KeyList, KeyPublic, Scope
from app.models.errors import ErrorItem
from app.models.logs import TaskLogs
from app.models.task import (
    FINAL_STATUSES,
    QueueInfo,
    TaskBatchResult,
    TaskCreate,
    TaskGraph,
    TaskList,
    TaskPublic,
    TaskStatus,
)
from app.models.worker import WorkerList, WorkerPublic
from dts_client.errors import Invalid, TaskFailed, WaitTimeout

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Waiting without a given poll interval starts fast (short tasks answer quickly) and slows down
# to this, so a long wait costs about one request per second.
FIRST_POLL, MAX_POLL = 0.05, 1.0
LOG_POLL = 0.5
DEFAULT_PAGE = 500


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request. `idempotent`: sending it twice has the effect of sending it once, so a
    connection lost after sending may be retried."""

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    body: bytes | None = None
    idempotent: bool = True


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Items for the caller of an iterating operation (a page of tasks, new log lines)."""

    items: Sequence[Any] = field(default_factory=tuple)


Step = Call | Pause | Emit
# A Call is answered with the response body (b"" for 204), a Pause or an Emit with None.
Op = Generator[Step, Any, T]
Progress = Callable[[int, int], None]

_queues = TypeAdapter(list[QueueInfo])


class _Page(TaskList):
    """GET /api/tasks's page: the seed's TaskList plus the keyset cursor of the next page."""

    next_cursor: str | None = None


class _TaskIds:
    """Unique task ids without a system call each (uuid4 reads the OS's random source every
    time, which showed in the producer's profile): 80 random bits per process, then a counter.
    A forked child draws its own prefix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._prefix, self._counter = secrets.token_hex(10), itertools.count()
                    self._pid = os.getpid()
        return f"{self._prefix}{next(self._counter):012x}"


_task_ids = _TaskIds()


def new_task_id() -> str:
    """32 hex characters, unique across processes and machines (by chance: 80 random bits)."""
    return _task_ids.next()


def validated(model: type[M], data: Mapping[str, Any], *prefix: str | int) -> M:
    """`model` built from `data`, or Invalid naming the field as the API's 422 would."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        items = [
            ErrorItem(loc=["body", *prefix, *e["loc"]], msg=e["msg"], type=e["type"])
            for e in exc.errors(include_url=False)
        ]
        raise Invalid(422, items) from None


def task_spec(
    task_type: str, payload: Mapping[str, Any] | None = None, **options: Any
) -> TaskCreate:
    """A TaskCreate with an id made up when none is given, so that sending it twice (a retry
    after a lost connection) creates one task: the API answers an identical resubmission of an
    id with the existing task."""
    given = {k: v for k, v in options.items() if v is not None}
    given["dependencies"] = list(given.get("dependencies", ()))
    given["task_id"] = given.get("task_id") or new_task_id()
    return validated(TaskCreate, {"task_type": task_type, "payload": dict(payload or {}), **given})


def as_spec(spec: TaskCreate | Mapping[str, Any], index: int | None = None) -> TaskCreate:
    if isinstance(spec, TaskCreate):
        return spec if spec.task_id else spec.model_copy(update={"task_id": new_task_id()})
    data = dict(spec)
    data["task_id"] = data.get("task_id") or new_task_id()
    prefix: tuple[str | int, ...] = () if index is None else ("tasks", index)
    return validated(TaskCreate, data, *prefix)


def spec_json(spec: TaskCreate) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_unset=True)


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


def path(*parts: str) -> str:
    """A URL path with each variable part quoted: an id with a slash stays one path step."""
    return "/".join(quote(part, safe="") if i else part for i, part in enumerate(parts))


def _params(**values: str | int | None) -> dict[str, str | int]:
    return {k: v for k, v in values.items() if v is not None}


# -- tasks ---------------------------------------------------------------------------------- #


def submit(spec: TaskCreate) -> Op[TaskPublic]:
    body = yield Call("POST", "/api/tasks", body=encode(spec_json(spec)))
    return TaskPublic.model_validate_json(body)


def submit_many(specs: Sequence[TaskCreate]) -> Op[list[TaskPublic]]:
    content = encode({"tasks": [spec_json(s) for s in specs]})
    body = yield Call("POST", "/api/tasks/batch", body=content)
    return TaskBatchResult.model_validate_json(body).tasks


def get(task_id: str) -> Op[TaskPublic]:
    body = yield Call("GET", path("/api/tasks", task_id))
    return TaskPublic.model_validate_json(body)


def cancel(task_id: str) -> Op[TaskPublic]:
    # Not idempotent for retries: a cancel that landed before the connection dropped would
    # answer 409 (already final) when sent again, hiding that it worked.
    body = yield Call("POST", path("/api/tasks", task_id, "cancel"), idempotent=False)
    return TaskPublic.model_validate_json(body)


def retry(task_id: str) -> Op[TaskPublic]:
    body = yield Call("POST", path("/api/tasks", task_id, "retry"), idempotent=False)
    return TaskPublic.model_validate_json(body)


def graph(task_id: str) -> Op[TaskGraph]:
    body = yield Call("GET", path("/api/tasks", task_id, "graph"))
    return TaskGraph.model_validate_json(body)


def list_tasks(
    *,
    status: TaskStatus | str | None,
    task_type: str | None,
    worker_id: str | None,
    page_size: int = DEFAULT_PAGE,
    limit: int | None = None,
) -> Op[None]:
    """Every matching task, newest first, page by page (keyset cursor: each page costs the same
    however deep). `limit` stops after that many."""
    wanted = limit if limit is not None else float("inf")
    seen, cursor = 0, None
    while seen < wanted:
        size = int(min(page_size, wanted - seen))
        params = _params(
            status=None if status is None else str(status),
            task_type=task_type,
            worker_id=worker_id,
            limit=size,
            cursor=cursor,
        )
        page = _Page.model_validate_json((yield Call("GET", "/api/tasks", params=params)))
        yield Emit(page.tasks)
        seen += len(page.tasks)
        cursor = page.next_cursor
        if cursor is None or not page.tasks:
            return


def wait(
    task_ids: Iterable[str],
    *,
    timeout: float | None,
    poll: float | None,
    raise_on_failure: bool,
    progress: Progress | None = None,
) -> Op[list[TaskPublic]]:
    """Poll until every task is final. Each round reads the unfinished tasks in order and stops
    at the first one still running: all must finish anyway, so the wait costs about one read per
    task plus one per round, not one per task per round."""
    ids = list(dict.fromkeys(task_ids))
    deadline = None if timeout is None else time.monotonic() + timeout
    final: dict[str, TaskPublic] = {}
    interval = poll or FIRST_POLL
    while True:
        for task_id in (i for i in ids if i not in final):
            task = yield from get(task_id)
            if task.status not in FINAL_STATUSES:
                break
            final[task_id] = task
            if raise_on_failure and task.status != TaskStatus.COMPLETED:
                raise TaskFailed(task)
        if progress is not None:
            progress(len(final), len(ids))
        if len(final) == len(ids):
            return [final[i] for i in ids]
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise WaitTimeout([i for i in ids if i not in final], timeout or 0.0)
        yield Pause(interval if left is None else min(interval, left))
        interval = poll or min(MAX_POLL, interval * 1.5)


def logs(
    task_id: str, *, attempt: int | None = None, after: int | None = None, limit: int | None = None
) -> Op[TaskLogs]:
    params = _params(attempt=attempt, after=after, limit=limit)
    body = yield Call("GET", path("/api/tasks", task_id, "logs"), params=params)
    return TaskLogs.model_validate_json(body)


def follow_logs(task_id: str, *, attempt: int | None = None, poll: float = LOG_POLL) -> Op[None]:
    """Every log line as it is written, until the task is final and its last lines are out."""
    after: int | None = None
    while True:
        page = yield from logs(task_id, attempt=attempt, after=after)
        yield Emit(page.lines)
        after = page.next_after if page.next_after is not None else after
        if page.lines:
            continue  # more may be waiting already: ask again before pausing
        task = yield from get(task_id)
        if task.status in FINAL_STATUSES:
            # Lines written between the read above and the end of the task.
            last = yield from logs(task_id, attempt=attempt, after=after)
            yield Emit(last.lines)
            return
        yield Pause(poll)


def result(task_id: str, *, timeout: float | None, poll: float | None = None) -> Op[Any]:
    (task,) = yield from wait([task_id], timeout=timeout, poll=poll, raise_on_failure=True)
    return task.result


# -- workers, queues, statistics --------------------------------------------------------------- #


def workers() -> Op[list[WorkerPublic]]:
    body = yield Call("GET", "/api/workers")
    return WorkerList.model_validate_json(body).workers


def queues() -> Op[list[QueueInfo]]:
    body = yield Call("GET", "/api/queues")
    return _queues.validate_json(body)


def overview() -> Op[dict[str, Any]]:
    """GET /api/stats/overview as JSON: its models live with the route (app/api/stats.py), which
    imports FastAPI, so the client does not import them."""
    body = yield Call("GET", "/api/stats/overview")
    answer: dict[str, Any] = orjson.loads(body)
    return answer


# -- API keys ------------------------------------------------------------------------------- #


def create_key(
    name: str,
    scopes: Sequence[Scope | str],
    *,
    expires_at: datetime | None = None,
    worker_id: str | None = None,
) -> Op[KeyCreated]:
    data = {"name": name, "scopes": list(scopes), "expires_at": expires_at, "worker_id": worker_id}
    spec = validated(KeyCreate, data)
    # Not idempotent: each POST makes a new key.
    content = encode(spec.model_dump(mode="json", exclude_none=True))
    body = yield Call("POST", "/api/keys", body=content, idempotent=False)
    return KeyCreated.model_validate_json(body)


def keys() -> Op[list[KeyPublic]]:
    body = yield Call("GET", "/api/keys")
    return KeyList.model_validate_json(body).keys


def revoke_key(key_id: str) -> Op[None]:
    yield Call("DELETE", path("/api/keys", key_id))
