"""Key management (admin scope): create a key (its secret is shown once), list keys without their
secrets, revoke one."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.auth import Admin
from app.api.deps import KeysDep
from app.api.errors import not_found
from app.api.limits import StrictJsonRoute
from app.models.auth import KeyCreate, KeyCreated, KeyList

router = APIRouter(prefix="/api/keys", tags=["keys"], route_class=StrictJsonRoute)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_key(spec: KeyCreate, keys: KeysDep, admin: Admin) -> KeyCreated:
    """Create a key. `key` is in this answer only: store it now, it cannot be shown again."""
    return await keys.create(spec, by=admin)


@router.get("")
async def list_keys(keys: KeysDep, admin: Admin) -> KeyList:
    """Every key, revoked and expired ones included, without secrets."""
    found = await keys.list_all()
    return KeyList(keys=found, total=len(found))


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "no such key"}},
)
async def revoke_key(key_id: str, keys: KeysDep, admin: Admin) -> None:
    """Revoke a key (revoking it again changes nothing). Other API processes refuse it within
    API_KEY_CACHE_SECONDS."""
    if not await keys.revoke(key_id, by=admin):
        raise not_found("key", key_id)
