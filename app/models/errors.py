"""The one error shape of every 4xx and 5xx (app/api/errors.py), as a schema for the OpenAPI."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ErrorItem(BaseModel):
    """What went wrong and where: `loc` names the part of the request (`["body", "priority"]`,
    `["path", "task_id"]`, `["header", "content-type"]`), `type` a stable machine-readable kind."""

    # Validation errors also carry FastAPI's `input` and `ctx`.
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[ErrorItem]
