"""Group commit for single submissions.

Every `POST /api/tasks` alone would pay a whole transaction (and, with durable commits, a disk
sync) plus a Redis call. Concurrent ones are admitted together instead: the first request of a
quiet moment is admitted at once; requests arriving while that admission is in flight wait for
it and then go together, in one transaction and one Redis call. Nothing waits on a timer, so a
lone request is as fast as before, and under load the groups grow with the load (Kafka's
`linger.ms` and River's job completer do the same with a timer).

Each request still gets its own answer: a group is all-or-nothing in the database, so a request
that cannot be admitted (unknown dependency, conflicting resubmission) is taken out and the rest
admitted again without it. A request answers only after its group is committed."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from app.database.admission import AdmissionError, NewTask
from app.models.task import TaskPublic

Admit = Callable[[Sequence[NewTask]], Awaitable[list[tuple[TaskPublic, bool]]]]
MAX_GROUP = 500


@dataclass
class _Waiting:
    new: NewTask
    answer: asyncio.Future[tuple[TaskPublic, bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SubmitGroup:
    """`flushers` admissions may be in flight at once. On PostgreSQL several concurrent
    transactions share their disk syncs anyway, so a request need not wait for the previous
    group's commit; on SQLite one at a time makes the biggest groups (its commits are serial)."""

    def __init__(self, admit: Admit, *, flushers: int = 1, max_group: int = MAX_GROUP) -> None:
        self._admit = admit
        self._max_group = max_group
        self._max_flushers = flushers
        self._waiting: list[_Waiting] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def submit(self, new: NewTask) -> tuple[TaskPublic, bool]:
        waiting = _Waiting(new)
        self._waiting.append(waiting)
        if len(self._flushers) < self._max_flushers:
            # A context of its own: the group's log lines must not carry the correlation id of
            # whichever request happened to start it.
            flusher = asyncio.create_task(self._flush_all(), context=contextvars.Context())
            self._flushers.add(flusher)
        return await waiting.answer

    async def _flush_all(self) -> None:
        try:
            while self._waiting:
                await self._admit_group(self._take_group())
        finally:
            # Here, not in a done callback: between the last look at the queue and leaving the
            # set nothing else may run, or a request queued then would find no flusher coming.
            current = asyncio.current_task()
            if current is not None:
                self._flushers.discard(current)

    def _take_group(self) -> list[_Waiting]:
        """Up to max_group requests, no task id twice (a batch refuses its own duplicates; the
        second request for an id goes in the next group and finds the first one stored)."""
        group: list[_Waiting] = []
        rest: list[_Waiting] = []
        ids: set[str] = set()
        for waiting in self._waiting:
            if len(group) < self._max_group and waiting.new.task_id not in ids:
                ids.add(waiting.new.task_id)
                group.append(waiting)
            else:
                rest.append(waiting)
        self._waiting = rest
        return group

    async def _admit_group(self, group: list[_Waiting]) -> None:
        while group:
            try:
                answers = await self._admit([w.new for w in group])
            except AdmissionError as exc:
                # Only this request is refused; its error names the field, not its group index.
                refused = group.pop(exc.index)
                exc.index = 0
                _settle(refused.answer, exc)
                continue
            except Exception as exc:  # an outage: nobody's task was admitted
                for waiting in group:
                    _settle(waiting.answer, exc)
                return
            for waiting, answer in zip(group, answers, strict=True):
                _settle(waiting.answer, answer)
            return


def _settle(
    future: asyncio.Future[tuple[TaskPublic, bool]],
    outcome: tuple[TaskPublic, bool] | Exception,
) -> None:
    if future.done():  # its request went away (client disconnected); the task stays admitted
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
