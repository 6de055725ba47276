"""Read-only aggregates for the dashboard."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/stats", tags=["stats"])
