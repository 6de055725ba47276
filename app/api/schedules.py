"""Periodic schedules (docs/schedules.md): create, list, read, change, pause and resume (PATCH
`enabled`), delete, and fire once by hand. Routes only translate; app.services.schedules acts.

Scopes: reading needs `read`; what defines or makes tasks (create, change, pause and resume,
trigger) needs `submit`, as the schedule submits on the caller's behalf from then on; deleting
needs `operate`, like cancelling."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, Request, Response, status

from app.api.auth import require
from app.api.errors import field_error, not_found
from app.api.limits import StrictJsonRoute
from app.api.responses import json_response
from app.database.admission import AdmissionError
from app.models.auth import Scope
from app.models.schedule import ScheduleCreate, ScheduleList, SchedulePublic, ScheduleUpdate
from app.models.task import TaskPublic
from app.services.schedules import InvalidChange, ScheduleExists, ScheduleService, UnknownSchedule

router = APIRouter(prefix="/api/schedules", tags=["schedules"], route_class=StrictJsonRoute)
READ = [require(Scope.READ)]
CHANGE = [require(Scope.SUBMIT)]
OPERATE = [require(Scope.OPERATE)]
UNKNOWN: dict[int | str, dict[str, Any]] = {404: {"description": "no such schedule"}}


async def _schedules(request: Request) -> ScheduleService:
    return request.app.state.schedules  # type: ignore[no-any-return]


SchedulesDep = Annotated[ScheduleService, Depends(_schedules)]


def _refused(exc: Exception, schedule_id: str) -> NoReturn:
    """The service's refusals as the API's one error shape."""
    if isinstance(exc, UnknownSchedule):
        raise not_found("schedule", schedule_id) from exc
    if isinstance(exc, InvalidChange):
        raise field_error(422, ["body", exc.field], str(exc), "invalid") from exc
    if isinstance(exc, AdmissionError):
        # The task's payload is over the limit: named where it sits in the schedule's body.
        loc = ["body", "task", *exc.loc]
        raise field_error(exc.status_code, loc, str(exc), exc.kind) from exc
    raise exc


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=CHANGE,
    responses={409: {"description": "schedule_id exists"}, 413: {"description": "payload"}},
)
async def create_schedule(spec: ScheduleCreate, schedules: SchedulesDep) -> SchedulePublic:
    """Create a schedule: exactly one of `cron` (5 fields, in `timezone`) and `interval_seconds`.
    The answer carries its first `next_fire_at`."""
    try:
        return await schedules.create(spec)
    except ScheduleExists as exc:
        raise field_error(409, ["body", "schedule_id"], str(exc), "conflict") from exc
    except AdmissionError as exc:
        _refused(exc, spec.schedule_id)


@router.get("", dependencies=READ)
async def list_schedules(schedules: SchedulesDep) -> ScheduleList:
    """Every schedule by id, each with its next fire and its latest few fires."""
    return ScheduleList(schedules=await schedules.list_all())


@router.get("/{schedule_id}", dependencies=READ, responses=UNKNOWN)
async def get_schedule(schedule_id: str, schedules: SchedulesDep) -> SchedulePublic:
    """A schedule with its last fires (newest first) and the status of the tasks they made."""
    try:
        return await schedules.get(schedule_id)
    except UnknownSchedule as exc:
        _refused(exc, schedule_id)


@router.patch("/{schedule_id}", dependencies=CHANGE, responses=UNKNOWN)
async def update_schedule(
    schedule_id: str, change: ScheduleUpdate, schedules: SchedulesDep
) -> SchedulePublic:
    """Change a schedule; `enabled: false` pauses it, `enabled: true` resumes it from now (the
    fire times of the pause are not replayed)."""
    try:
        return await schedules.update(schedule_id, change)
    except (UnknownSchedule, InvalidChange, AdmissionError) as exc:
        _refused(exc, schedule_id)


@router.delete(
    "/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=OPERATE,
    responses=UNKNOWN,
)
async def delete_schedule(schedule_id: str, schedules: SchedulesDep) -> Response:
    """Delete a schedule and its fire history; the tasks it made stay."""
    try:
        await schedules.delete(schedule_id)
    except UnknownSchedule as exc:
        _refused(exc, schedule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{schedule_id}/trigger",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    dependencies=CHANGE,
    responses=UNKNOWN,
)
async def trigger_schedule(schedule_id: str, schedules: SchedulesDep) -> Response:
    """Fire now, once, even when paused: the task `{schedule_id}:{now, ISO 8601 UTC}`."""
    try:
        task = await schedules.trigger(schedule_id)
    except (UnknownSchedule, AdmissionError) as exc:
        _refused(exc, schedule_id)
    return json_response(task, status.HTTP_201_CREATED)
