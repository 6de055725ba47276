"""One error shape for every 4xx: FastAPI's own `{"detail": [{"loc", "msg", "type"}]}`, so a client
parses validation errors and domain errors alike, and always learns the field and the reason."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException


def field_error(
    status: int, loc: list[str | int], msg: str, kind: str, **headers: str
) -> HTTPException:
    detail: list[dict[str, Any]] = [{"loc": loc, "msg": msg, "type": kind}]
    return HTTPException(status_code=status, detail=detail, headers=headers or None)


def not_found(what: str, ident: str) -> HTTPException:
    return field_error(404, ["path", f"{what}_id"], f"{what} '{ident}' not found", "not_found")
