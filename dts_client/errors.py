"""Typed errors: one class per way a call can fail, built from the API's one error shape
(`{"detail": [{"loc", "msg", "type"}]}`, app/models/errors.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.models.errors import ErrorBody, ErrorItem

if TYPE_CHECKING:
    from app.models.task import TaskPublic


class DtsError(Exception):
    """Every error this client raises."""


class ApiError(DtsError):
    """The API answered with an error status. `errors` holds its items (`loc`, `msg`, `type`)."""

    def __init__(self, status: int, errors: list[ErrorItem], retry_after: float | None = None):
        self.status = status
        self.errors = errors
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [_describe(item) for item in self.errors] or ["(no detail)"]
        return f"HTTP {self.status}: " + "; ".join(parts)


class Invalid(ApiError):
    """The request was refused as invalid (422, and 400/413/415). `field` is the first error's
    location, e.g. `("body", "tasks", 3, "priority")`."""

    @property
    def field(self) -> tuple[str | int, ...]:
        return tuple(self.errors[0].loc) if self.errors else ()


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: a task_id reused with another body, a cancel of a finished task, a retry of a task
    that did not fail."""


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class RateLimited(ApiError):
    """429 after the retry budget was spent."""


class Unavailable(DtsError):
    """The API could not be reached, or kept answering 503 past the retry budget."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TaskFailed(DtsError):
    """A waited-for task ended failed or cancelled. `task` is its final state."""

    def __init__(self, task: TaskPublic) -> None:
        self.task = task
        reason = task.error or task.status.value
        super().__init__(f"task {task.task_id} {task.status.value}: {reason}")


class WaitTimeout(DtsError, TimeoutError):
    """The tasks were not final when the wait's timeout ran out. `pending` names them."""

    def __init__(self, pending: list[str], timeout: float) -> None:
        self.pending = pending
        shown = ", ".join(pending[:5]) + (" ..." if len(pending) > 5 else "")
        super().__init__(f"{len(pending)} task(s) not final after {timeout} s: {shown}")


def _describe(item: ErrorItem) -> str:
    where = ".".join(str(part) for part in item.loc)
    return f"{where}: {item.msg}" if where else item.msg


_BY_STATUS: dict[int, type[ApiError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: Invalid,
    415: Invalid,
    422: Invalid,
    429: RateLimited,
}


def parse_errors(body: bytes) -> list[ErrorItem]:
    """The items of an error body; one synthetic item when it is not the API's shape (a proxy's
    HTML page, an empty body)."""
    try:
        return ErrorBody.model_validate_json(body).detail
    except ValidationError:
        text = body[:200].decode(errors="replace").strip()
        return [ErrorItem(loc=[], msg=text or "no body", type="unparsed")]


def api_error(status: int, body: bytes, retry_after: float | None = None) -> DtsError:
    if status == 503:
        items = parse_errors(body)
        return Unavailable(ApiError(status, items).message, status)
    cls: type[ApiError] = _BY_STATUS.get(status, ApiError)
    return cls(status, parse_errors(body), retry_after)


def error_payload(error: DtsError) -> dict[str, Any]:
    """An error as JSON, for the command line's --json output."""
    out: dict[str, Any] = {"error": type(error).__name__, "message": str(error)}
    if isinstance(error, ApiError):
        out["status"] = error.status
        out["detail"] = [item.model_dump(mode="json") for item in error.errors]
    return out
