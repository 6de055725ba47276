"""Who may call what: one dependency resolves the caller from its key, and each route declares
the scope it needs with `require(scope)` (docs/security.md has the table).

- A key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
- Missing key: 401 when keys are required (AUTH_REQUIRED, or the API not on loopback); otherwise
  the request goes through as the anonymous caller, which may do everything but manage keys,
  unless it came through a reverse proxy (Forwarded or X-Forwarded-For): then it is a 401 too.
- A key that is sent is always checked, in either mode: unknown, expired or revoked is a 401, and
  its scopes apply (a client configured with a key behaves the same when keys become required).
- Key without the scope: 403. A worker key bound to a worker id (or prefix) gets a 403 on the
  routes of any other worker id."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from app.api.errors import field_error
from app.models.auth import Scope
from app.services.auth import ANONYMOUS, Caller, KeyStore

log = structlog.get_logger(__name__)

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the same key in `X-API-Key`"
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ApiKeyDep = Annotated[str | None, Depends(api_key_header)]


def unauthorized(message: str) -> HTTPException:
    return field_error(
        401, ["header", "authorization"], message, "unauthorized", **{"WWW-Authenticate": "Bearer"}
    )


def forbidden(message: str) -> HTTPException:
    return field_error(403, ["header", "authorization"], message, "forbidden")


async def caller(request: Request, credentials: BearerDep, api_key: ApiKeyDep) -> Caller:
    """The key's caller, the anonymous caller (no key, keys not required), or a 401."""
    key = credentials.credentials if credentials is not None else api_key
    if not key:
        if request.app.state.auth_enforced:
            raise unauthorized("an API key is required (Authorization: Bearer <key>)")
        if _proxied(request):
            # A loopback API behind a reverse proxy is not local: it is as exposed as the proxy.
            log.warning("auth.proxied_without_key", path=request.url.path)
            raise unauthorized("a proxied request needs an API key; set AUTH_REQUIRED=true")
        return ANONYMOUS
    keys: KeyStore = request.app.state.keys
    found = await keys.verify(key)
    if found is None:
        log.warning("auth.refused", path=request.url.path, reason="unknown, expired or revoked")
        raise unauthorized("unknown, expired or revoked API key")
    return found


def _proxied(request: Request) -> bool:
    headers = request.headers
    return "forwarded" in headers or "x-forwarded-for" in headers


CallerDep = Annotated[Caller, Depends(caller)]


async def _authorize(security_scopes: SecurityScopes, request: Request, who: CallerDep) -> Caller:
    for name in security_scopes.scopes:
        scope = Scope(name)
        if who.anonymous and scope == Scope.ADMIN:
            raise unauthorized("managing keys needs an admin key, even when keys are not required")
        if not who.holds(scope):
            log.warning("auth.forbidden", path=request.url.path, key_id=who.key_id, scope=scope)
            raise forbidden(f"this key lacks the '{scope}' scope")
    worker_id = request.path_params.get("worker_id")
    if worker_id is not None:
        ensure_may_act_as(who, worker_id)
    return who


def ensure_may_act_as(who: Caller, worker_id: str) -> None:
    """403 when a bound worker key speaks for another worker (for the register body; routes with
    a worker id in the path are checked by `require`)."""
    if not who.may_act_as(worker_id):
        log.warning("auth.impersonation", key_id=who.key_id, bound=who.worker_id, as_=worker_id)
        raise forbidden(f"this key may not act as worker '{worker_id}'")


def require(scope: Scope) -> Any:
    """The dependency of a route that needs `scope`; it returns the caller."""
    return Security(_authorize, scopes=[scope.value])


async def metrics_access(request: Request, credentials: BearerDep, api_key: ApiKeyDep) -> None:
    """/metrics is open unless METRICS_PUBLIC=false; then it needs the read scope."""
    if request.app.state.settings.metrics_public:
        return
    who = await caller(request, credentials, api_key)
    if not who.holds(Scope.READ):
        raise forbidden(f"this key lacks the '{Scope.READ}' scope")


Submitter = Annotated[Caller, require(Scope.SUBMIT)]
Reader = Annotated[Caller, require(Scope.READ)]
Operator = Annotated[Caller, require(Scope.OPERATE)]
WorkerCaller = Annotated[Caller, require(Scope.WORKER)]
Admin = Annotated[Caller, require(Scope.ADMIN)]
