"""One error shape for every 4xx: FastAPI's own `{"detail": [{"loc", "msg", "type"}]}`, so a client
parses validation errors and domain errors alike, and always learns the field and the reason."""

from __future__ import annotations

import math
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.limits import STATE_CHANGING, rate_scope
from app.models.errors import ErrorBody


def field_error(
    status: int, loc: list[str | int], msg: str, kind: str, **headers: str
) -> HTTPException:
    detail: list[dict[str, Any]] = [{"loc": loc, "msg": msg, "type": kind}]
    return HTTPException(status_code=status, detail=detail, headers=headers or None)


def not_found(what: str, ident: str) -> HTTPException:
    return field_error(404, ["path", f"{what}_id"], f"{what} '{ident}' not found", "not_found")


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: a refused `1e309` is echoed back as the string 'inf'."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own errors (404 of an unknown path, 405, the 400 of a body that
    cannot be read) in the one shape, instead of a bare string."""
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    if not isinstance(detail, list):
        detail = [{"loc": [], "msg": str(detail), "type": HTTP_KINDS.get(exc.status_code, "error")}]
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, made safe for inputs that JSON cannot carry (its own handler fails with a
    500 on a non-finite float)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)


HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}

# Statuses every operation under /api/ may answer, besides its own (404, 409) and FastAPI's 422.
COMMON_ERRORS = {
    401: "No API key, or an unknown, expired or revoked one (when keys are required)",
    403: "The key lacks the scope this operation needs, or acts for another worker",
    413: "The request body is over its limit (MAX_REQUEST_BYTES, MAX_BATCH_REQUEST_BYTES)",
    422: "Invalid input: a field, a NUL in the path, query or correlation id",
    503: "The database is unavailable (Retry-After), or the server is at its concurrency limit",
}
BODY_ERRORS = {
    400: "The request body could not be read",
    408: "The request body did not arrive within REQUEST_BODY_TIMEOUT",
    415: "A state-changing call without Content-Type: application/json nor an API key header",
}
RATE_LIMITED = "Over the caller's rate for this scope (RATE_LIMIT_*); see Retry-After"
# /health and /health/ready answer 503 with their own body (which part is down).
HEALTH_PATHS = ("/health", "/health/ready")
HEALTH_DOWN = {
    "description": "A dependency is down; the body names it",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _operation_errors(path: str, method: str, operation: dict[str, Any]) -> dict[int, str]:
    errors = dict(COMMON_ERRORS)
    if method.upper() in STATE_CHANGING or "requestBody" in operation:
        errors |= BODY_ERRORS
    if rate_scope(method.upper(), path) is not None:
        errors[429] = RATE_LIMITED
    if "{" in path:
        errors[404] = "No such resource"
    return errors


def declare_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add every error status an operation under /api/ can answer to the OpenAPI document, with
    the ErrorBody schema, so clients (and the schema fuzzing test) know them all."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body.pop("$defs", {}))
    components["ErrorBody"] = body
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if path in HEALTH_PATHS:
                responses.setdefault("503", HEALTH_DOWN)
            if not path.startswith("/api/"):
                continue
            for status, description in _operation_errors(path, method, operation).items():
                responses.setdefault(str(status), {"description": description})
            for status, entry in responses.items():
                # Every error in the one shape; FastAPI's own 422 schema says the same.
                if int(status) >= 400 and (status != "422" or "content" not in entry):
                    entry["content"] = ERROR_REF
    return schema
