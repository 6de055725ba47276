"""LOG_LEVEL governs uvicorn's own lines too: at WARNING, `python -m app.main` prints neither
uvicorn's start-up lines nor an access line per request; at INFO it does."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest

from app.utils.embedded_servers import ValkeyServer, free_port
from tests.integration.harness import Stack, eventually

pytestmark = pytest.mark.e2e


async def output_at(level: str, tmp: Path, valkey: ValkeyServer) -> str:
    stack = Stack(tmp, f"sqlite:///{tmp / f'{level}.db'}", valkey.url, env={"LOG_LEVEL": level})
    port = free_port()
    api = stack._spawn(f"api-{level}", [sys.executable, "-m", "app.main", "--port", str(port)])
    try:

        async def answers() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"http://127.0.0.1:{port}/health/live")).is_success
            except httpx.TransportError:
                return False

        await eventually(answers, timeout=60, what="the API to answer")
        api.signal(signal.SIGTERM)
        await api.wait(timeout=30)
    finally:
        stack.stop_all()
    return api.log.read_text()


async def test_log_level_governs_uvicorn_lines(tmp_path: Path, valkey: ValkeyServer) -> None:
    quiet = await output_at("WARNING", tmp_path, valkey)
    chatty = await output_at("INFO", tmp_path, valkey)
    assert "Uvicorn running on" in chatty and "GET /health/live" in chatty
    assert "Uvicorn running on" not in quiet and "GET /health/live" not in quiet
