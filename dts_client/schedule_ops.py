"""Schedule operations (issue 13), like dts_client/operations.py. A module of its own because
the schedule models validate cron expressions with croniter: `import dts_client` does not need
it, only the first schedule call does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.models.schedule import ScheduleCreate, ScheduleList, SchedulePublic, ScheduleUpdate
from app.models.task import TaskPublic
from dts_client.operations import Call, Op, encode, path, validated

TASK_FIELDS = ("priority", "timeout", "max_retries")


def schedule_spec(
    schedule_id: str, task_type: str, payload: Mapping[str, Any] | None, options: Mapping[str, Any]
) -> ScheduleCreate:
    """The body of POST /api/schedules from flat options: `priority`, `timeout` and
    `max_retries` go to the task each fire creates, the rest to the schedule."""
    given = {k: v for k, v in options.items() if v is not None}
    task = {"task_type": task_type, "payload": dict(payload or {})}
    task |= {k: given.pop(k) for k in TASK_FIELDS if k in given}
    return validated(ScheduleCreate, {"schedule_id": schedule_id, "task": task, **given})


def schedules() -> Op[list[SchedulePublic]]:
    body = yield Call("GET", "/api/schedules")
    return ScheduleList.model_validate_json(body).schedules


def get_schedule(schedule_id: str) -> Op[SchedulePublic]:
    body = yield Call("GET", path("/api/schedules", schedule_id))
    return SchedulePublic.model_validate_json(body)


def create_schedule(spec: ScheduleCreate) -> Op[SchedulePublic]:
    content = encode(spec.model_dump(mode="json", exclude_unset=True))
    # Not idempotent: a second POST of the same id is a 409.
    body = yield Call("POST", "/api/schedules", body=content, idempotent=False)
    return SchedulePublic.model_validate_json(body)


def update_schedule(schedule_id: str, changes: Mapping[str, Any]) -> Op[SchedulePublic]:
    update = validated(ScheduleUpdate, changes)
    content = encode(update.model_dump(mode="json", exclude_unset=True))
    body = yield Call("PATCH", path("/api/schedules", schedule_id), body=content)
    return SchedulePublic.model_validate_json(body)


def delete_schedule(schedule_id: str) -> Op[None]:
    # Idempotent in effect; a repeat after a lost answer is a 404 the caller can ignore.
    yield Call("DELETE", path("/api/schedules", schedule_id), idempotent=False)


def trigger_schedule(schedule_id: str) -> Op[TaskPublic]:
    body = yield Call("POST", path("/api/schedules", schedule_id, "trigger"), idempotent=False)
    return TaskPublic.model_validate_json(body)
