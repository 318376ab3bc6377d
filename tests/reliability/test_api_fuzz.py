"""API fuzzing: schemathesis generates requests from the server's own OpenAPI document, for every
operation, valid and invalid. No answer may be a 5xx, none may hang, and every answer must match
the document (status codes, content type, body schema).

A few hundred cases in the normal run; ``make fuzz`` sets ATOLL_FUZZ_EXAMPLES for many more.
Left out: ``POST /v1/template``, whose generated image URIs would make the server pull from
registries on the internet (tests send packets only to this machine); its validation is fuzzed
through the same models by the other template operations and tests/templates."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from atoll.server.app import create_app
from atoll.server.settings import Settings
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged]

EXAMPLES = int(os.environ.get("ATOLL_FUZZ_EXAMPLES", "4"))  # per operation and generation mode
TIMEOUT_S = 60.0  # "no hang": every call answers within this
SKIPPED = {"POST /v1/template"}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def operations() -> list[Any]:
    """The API's operations, from the same application object the server runs (the document is
    built without starting it, so the tests can be collected before the server is up)."""
    schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
    found = [result.ok() for result in schema.get_all_operations()]
    # the test servers run without the SSH gateway (--ssh-port 0), so its routes answer 501 by
    # design (tests/ssh drives them on a server with the gateway)
    return [op for op in found if op.label not in SKIPPED and "/ssh" not in op.path]


@pytest.fixture(scope="module", autouse=True)
def clean_up_after_fuzzing(server: ServerProcess) -> Iterator[None]:
    yield
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        for _ in range(10):
            items = http.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]
            if not items:
                break
            for item in items:
                http.delete(f"/v1/sandbox/{item['id']}/")
        for snap in http.get("/v1/snapshots", params={"page-size": 100}).json()["items"]:
            http.delete(f"/v1/snapshot/{snap['id']}")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One keep-alive connection for all cases (not thousands of short-lived ones)."""
    with requests.Session() as s:
        yield s


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("operation", operations(), ids=lambda op: op.label)
def test_api(operation: Any, mode: GenerationMode, server: ServerProcess, session: requests.Session) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=server.base_url,
            session=session,
            headers=server.headers,
            checks=CHECKS,
            timeout=TIMEOUT_S,
        )

    try:
        call()
    except Unsatisfiable:
        pytest.skip(f"{operation.label} takes no input that could be invalid")
