"""Task schemas and the task state machine (statuses and the transitions allowed between them)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.models.json_limits import check_json, result_problem, storable_text

# 1-100 of letters, digits and _.:- with at least one that is not a dot: an id made only of dots
# ('.', '..') is not reachable at its own URL (clients and proxies resolve it as a path step).
# Written without lookahead, which pydantic's regex engine lacks; the length is a separate bound.
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{0,99}[A-Za-z0-9_:\-][A-Za-z0-9_.:\-]{0,99}$"
NAME_MAX_LENGTH = 100
NAME_RE = re.compile(NAME_PATTERN)
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_ATTEMPT = 2**31 - 1


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# Every guarded statement in app/database/transitions.py moves a task along one of these edges;
# tests/test_state_machine.py checks that the SQL guards agree with this table.
TRANSITIONS: dict[str, tuple[frozenset[TaskStatus], TaskStatus]] = {
    "start": (frozenset({TaskStatus.PENDING}), TaskStatus.RUNNING),
    "complete": (frozenset({TaskStatus.RUNNING}), TaskStatus.COMPLETED),
    "fail": (frozenset({TaskStatus.RUNNING}), TaskStatus.FAILED),
    "retry": (frozenset({TaskStatus.RUNNING}), TaskStatus.PENDING),
    "requeue": (frozenset({TaskStatus.RUNNING}), TaskStatus.PENDING),
    "fail_dependents": (frozenset({TaskStatus.PENDING}), TaskStatus.FAILED),
    "expire": (frozenset({TaskStatus.PENDING}), TaskStatus.FAILED),
    "cancel": (frozenset({TaskStatus.PENDING, TaskStatus.RUNNING}), TaskStatus.CANCELLED),
    "manual_retry": (frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED}), TaskStatus.PENDING),
}


class AttemptOutcome(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    RELEASED = "released"
    CANCELLED = "cancelled"


Priority = Annotated[StrictInt, Field(ge=1, le=10, description="1 (lowest) to 10 (highest)")]
Name = Annotated[
    StrictStr,
    Field(
        pattern=NAME_PATTERN,
        max_length=NAME_MAX_LENGTH,
        description="letters, digits and _.:- (1-100), not only dots",
    ),
]
# A JSON object that both stores can hold exactly (app/models/json_limits.py).
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]


class TaskCreate(BaseModel):
    """Body of POST /api/tasks. Defaults that depend on configuration are filled by the service."""

    model_config = ConfigDict(extra="forbid")

    task_id: Name | None = None
    task_type: Name
    payload: JsonObject = Field(default_factory=dict)
    priority: Priority = 1
    dependencies: list[Name] = Field(default_factory=list, max_length=1000)
    timeout: StrictInt | None = Field(
        default=None, ge=1, le=MAX_TIMEOUT_SECONDS, description="seconds"
    )
    max_retries: StrictInt | None = Field(default=None, ge=0, le=100)
    scheduled_at: datetime | None = None
    delay_seconds: float | None = Field(default=None, ge=0, le=366 * 24 * 3600)

    @field_validator("dependencies")
    @classmethod
    def _not_self(cls, deps: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("task_id") in deps:
            raise ValueError("a task cannot depend on itself")
        return deps

    def fingerprint(self) -> str:
        """Stable hash of the request, so a resubmission can be told apart from a conflict."""
        body = self.model_dump(mode="json", exclude={"task_id"})
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class AttemptPublic(BaseModel):
    attempt: int
    worker_id: str | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: AttemptOutcome
    error: str | None


class TaskEvent(BaseModel):
    """An operator action on a task (cancel, retry), with the key that made it (None: no key,
    in open mode)."""

    at: datetime
    action: str
    key_id: str | None
    detail: dict[str, Any] | None = None


class TaskPublic(BaseModel):
    """The seed's task shape, plus the fields the scheduler tracks."""

    task_id: str
    task_type: str
    status: TaskStatus
    priority: int
    payload: dict[str, Any]
    dependencies: list[str] = Field(default_factory=list)
    dependents: list[str] | None = None
    worker_id: str | None
    attempt: int
    max_retries: int
    timeout: int
    created_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    result: Any = None
    error: str | None
    correlation_id: str | None = None
    attempts: list[AttemptPublic] | None = None
    # Filled by GET /api/tasks/{task_id} (oldest first), like `attempts`.
    events: list[TaskEvent] | None = None


class TaskList(BaseModel):
    tasks: list[TaskPublic]
    total: int
    limit: int
    offset: int


class TaskBatch(BaseModel):
    """Body of POST /api/tasks/batch: admitted all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskCreate] = Field(min_length=1, max_length=10_000)


class TaskBatchResult(BaseModel):
    tasks: list[TaskPublic]
    created: int


class GraphNode(BaseModel):
    task_id: str
    task_type: str
    status: TaskStatus
    priority: int


class GraphEdge(BaseModel):
    """`from` must complete before `to` can start."""

    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str


class TaskGraph(BaseModel):
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: bool


class QueueInfo(BaseModel):
    task_type: str
    ready: int
    live_workers: int
    routable: bool


class TaskToRun(BaseModel):
    """What a worker receives when its claim is confirmed: everything needed to run one attempt."""

    task_id: str
    task_type: str
    payload: dict[str, Any]
    attempt: int
    timeout: int
    correlation_id: str | None
    dependency_results: dict[str, Any] = Field(default_factory=dict)


class TaskReport(BaseModel):
    """A worker's report of how one attempt ended."""

    model_config = ConfigDict(extra="forbid")

    task_id: Name
    # The attempts column is a 32-bit integer on both stores.
    attempt: StrictInt = Field(ge=1, le=MAX_ATTEMPT)
    outcome: AttemptOutcome
    result: Any = None
    error: str | None = None

    @model_validator(mode="after")
    def _storable(self) -> Self:
        """A result no store can hold fails its attempt with the reason, instead of refusing the
        whole batch (one bad report must not block the others, and a worker that retried a
        refused batch would retry it for ever). An error message is cut and cleaned, not
        refused: it is the diagnosis, and losing it helps no one."""
        if self.error is not None:
            self.error = storable_text(self.error)
        if self.result is None:
            return self
        problem = result_problem(self.result)
        if problem is None:
            return self
        if self.outcome == AttemptOutcome.COMPLETED:
            self.outcome = AttemptOutcome.ERROR
            self.error = storable_text(f"result refused: {problem}")
        self.result = None
        return self


@dataclass(frozen=True, slots=True)
class ReadyTask:
    """What the transport needs to queue a task: which queue, in what order, from when."""

    task_id: str
    task_type: str
    priority: int
    ready_at: datetime | None = None
