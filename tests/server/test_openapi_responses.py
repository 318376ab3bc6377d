"""The OpenAPI document describes every answer: each operation's success response has a schema
(a named model for JSON, a typed body for streams, files and text), or is a 204 with no body.
What a route answers is then checked by the fuzzer (tests/reliability/test_api_fuzz.py) against
these schemas."""

from __future__ import annotations

from typing import Any

import pytest

from atoll.server.app import create_app
from atoll.server.settings import Settings

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    ]


def test_every_operation_has_a_success_response_schema(document: dict[str, Any]) -> None:
    missing = []
    for method, path, op in _operations(document):
        successes = {status: r for status, r in op["responses"].items() if status.startswith("2")}
        if not successes:
            missing.append(f"{method} {path}: no 2xx response")
        for status, response in successes.items():
            content = response.get("content", {})
            if status == "204":
                if content:
                    missing.append(f"{method} {path}: 204 with a body")
                continue
            if not content:
                missing.append(f"{method} {path} {status}: no content")
            for media_type, body in content.items():
                schema = body.get("schema") or {}
                if media_type == "application/json":
                    if "$ref" not in schema:  # a named model, not "any object"
                        missing.append(f"{method} {path} {status} {media_type}: {schema}")
                elif schema.get("type") != "string":
                    missing.append(f"{method} {path} {status} {media_type}: {schema}")
    assert not missing, "\n".join(missing)


def test_the_walk_sees_the_whole_api(document: dict[str, Any]) -> None:
    found = {(method, path) for method, path, _ in _operations(document)}
    assert len(found) > 60
    for expected in (
        ("POST", "/v1/sandbox"),
        ("POST", "/v1/sandbox/{sandbox_id}/filesystem/ls"),
        ("GET", "/v1/sandbox/{sandbox_id}/process/{pid}/events"),
        ("POST", "/v1/sandbox/{sandbox_id}/git/status"),
        ("POST", "/v1/sandbox/{sandbox_id}/ssh/access"),
        ("GET", "/v1/health"),
    ):
        assert expected in found


def test_models_name_the_fields_of_the_answers(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["FileEntry"]["required"]) >= {"name", "path", "is_dir", "size", "mode"}
    assert schemas["ProcessInfo"]["properties"]["pid"]["type"] == "integer"
    health = schemas["Health"]["properties"]
    assert health["capacity"]["$ref"].endswith("/Capacity")
