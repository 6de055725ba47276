"""docker-compose.yml, the Dockerfile and the balancer's configuration, checked without a Docker
engine: the compose file against the Compose specification's JSON schema (tests/data/
compose-spec.json, from github.com/compose-spec/compose-spec, Apache-2.0), then the properties
the deployment guide promises, which a schema cannot see."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def specification() -> jsonschema.Draft7Validator:
    # The schema names draft 7 by an address jsonschema does not map; say it explicitly.
    return jsonschema.Draft7Validator(
        json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    )


def test_compose_file_follows_the_specification(
    compose: dict[str, Any], specification: jsonschema.Draft7Validator
) -> None:
    specification.validate(compose)


def test_a_broken_compose_file_is_caught_by_the_schema(
    compose: dict[str, Any], specification: jsonschema.Draft7Validator
) -> None:
    """The check above can fail: a misspelt key is refused."""
    broken = {**compose, "services": {**compose["services"], "api": {"imagee": "x"}}}
    with pytest.raises(jsonschema.ValidationError, match="imagee"):
        specification.validate(broken)


def test_two_api_replicas_behind_the_balancer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["api"], "clients reach the replicas through the balancer"
    assert "8000:8000" in services["lb"]["ports"]
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"
    for client in ("worker", "dashboard"):
        command = " ".join(services[client]["command"]) + str(services[client]["environment"])
        assert "http://lb:8000" in command
    assert "/health/ready" in " ".join(services["api"]["healthcheck"]["test"])


def test_stores_are_healthy_before_the_api_starts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for store in ("redis", "postgres"):
        assert services[store]["healthcheck"]["test"]
        assert services["api"]["depends_on"][store]["condition"] == "service_healthy"
    assert "noeviction" in services["redis"]["command"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_workers_get_longer_than_their_grace_period_to_stop(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    grace = float(worker["command"][worker["command"].index("--grace-period") + 1])
    assert _seconds(worker["stop_grace_period"]) > grace


def test_image_runs_unprivileged_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", dockerfile, re.M)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", ".env"} <= ignored


HAPROXY = shutil.which("haproxy")


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
def test_balancer_configuration_is_valid() -> None:
    assert HAPROXY is not None
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(ROOT / "deploy/haproxy/haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
