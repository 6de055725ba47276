"""Configuration: the seed's variable names, URL forms, and the shipped .env.example."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings, to_async_database_url

ROOT = Path(__file__).resolve().parent.parent


def test_seed_database_url_forms_map_to_async_drivers() -> None:
    assert to_async_database_url("postgresql://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert to_async_database_url("postgres://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert to_async_database_url("sqlite:///data/x.db") == "sqlite+aiosqlite:///data/x.db"
    assert to_async_database_url(None).startswith("sqlite+aiosqlite:///")


def test_env_example_parses_and_matches_the_defaults() -> None:
    settings = Settings(_env_file=ROOT / ".env.example")
    defaults = Settings(_env_file=None)
    for name in (
        "api_port",
        "max_workers",
        "task_timeout",
        "heartbeat_interval",
        "lease_seconds",
        "max_retries",
        "max_payload_bytes",
        "metrics_enabled",
        "priority_aging_seconds",
    ):
        assert getattr(settings, name) == getattr(defaults, name), name
    assert settings.log_level == "INFO"


def test_seed_environment_variable_names(monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    for name, value in {
        "API_PORT": "9000",
        "MAX_WORKERS": "3",
        "TASK_TIMEOUT": "60",
        "HEARTBEAT_INTERVAL": "5",
        "LOG_LEVEL": "debug",
        "METRICS_ENABLED": "false",
        "DEBUG": "true",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert (settings.api_port, settings.max_workers, settings.task_timeout) == (9000, 3, 60)
    assert (
        settings.heartbeat_interval,
        settings.log_level,
        settings.metrics_enabled,
        settings.debug,
    ) == (5.0, "DEBUG", False, True)
