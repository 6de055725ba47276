"""Property-based fuzzing of the whole OpenAPI document (schemathesis against the app in
process, its lifespan and real stores included), on SQLite and PostgreSQL: no request, valid or
not, gets a 5xx, and every answer matches the document (status declared, body and headers as
declared). A short run: 5 examples per operation and mode, derandomised so CI is repeatable;
FUZZ_EXAMPLES=500 makes a longer hunt."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from app.config import Settings
from app.main import create_app
from app.utils.embedded_servers import PostgresServer, ValkeyServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed_schema(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    isolated_valkey: ValkeyServer,
) -> Iterator[OpenApiSchema]:
    """The app on one store, loaded by schemathesis, which runs it (lifespan included) on an
    event loop of its own: hence a Valkey and a database of the module's own."""
    name = f"fuzz_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    else:
        if os.environ.get("TEST_DATABASE_URL"):
            pytest.skip("the fuzzing test creates its database on the private PostgreSQL")
        postgres: PostgresServer | None = request.getfixturevalue("postgres")
        assert postgres is not None
        url = postgres.create_database(name)
    app = create_app(
        Settings(
            database_url=url,
            redis_url=isolated_valkey.url,
            api_host="127.0.0.1",
            log_level="ERROR",
        )
    )
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        shutdown_lifespans()
        if request.param == "postgresql":
            request.getfixturevalue("postgres").drop_database(name)
        else:
            Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fuzz(operation: APIOperation[Any, Any, Any, Any], mode: GenerationMode) -> None:
    @FUZZ
    @given(case=operation.as_strategy(mode))
    def run(case: Case[Any]) -> None:
        case.call_and_validate(checks=CHECKS)

    run()


# Operations are driven one by one rather than through schemathesis' pytest plugin, whose lazy
# schema does not run under pytest 9 (it reads a node attribute that pytest 9 no longer has).
def test_the_api_answers_every_request_as_its_schema_says(
    fuzzed_schema: OpenApiSchema, request: pytest.FixtureRequest
) -> None:
    operations = []
    for result in fuzzed_schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) >= 20
    # Invalid requests are refused by validation before any store is touched: one store is
    # enough for them, which keeps the run short.
    negative = request.node.callspec.params["fuzzed_schema"] == "postgresql"
    for operation in operations:
        fuzz(operation, GenerationMode.POSITIVE)
        if negative:
            # An operation without parameters or body has nothing to get wrong.
            with contextlib.suppress(Unsatisfiable):
                fuzz(operation, GenerationMode.NEGATIVE)
