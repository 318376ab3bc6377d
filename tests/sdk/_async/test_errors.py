"""Every failure surfaces as a class of the one error tree, with the server's words and metadata."""

from __future__ import annotations

import httpx
import pytest

from atoll import (
    APIError,
    AsyncClient,
    AtollTimeoutError,
    AuthenticationError,
    BadRequestError,
    CapacityError,
    ConflictError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)

from .._mock import Router, sandbox_json


def make_client(router: Router) -> AsyncClient:
    return AsyncClient(
        api_key="k", base_url="http://api.test", http_client=httpx.AsyncClient(transport=router.transport())
    )


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, APIError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, CapacityError),
    ],
)
async def test_status_maps_to_error_class(status: int, error_class: type[APIError]) -> None:
    router = Router().on("GET", "/v1/sandbox/nope/", status, json={"message": "sandbox not found"})
    with pytest.raises(error_class) as caught:
        await make_client(router).sandboxes.get("nope")
    error = caught.value
    assert type(error) is error_class
    assert error.status_code == status
    assert error.message == error.error_message == "sandbox not found"
    assert str(error) == f"{status} sandbox not found"
    assert error.body == b'{"message":"sandbox not found"}'
    assert error.retryable is (status == 429 or status >= 500)
    assert "request: GET /v1/sandbox/nope/" in error.__notes__


async def test_validation_errors_carry_the_field_list() -> None:
    body = {"message": "invalid request", "errors": [{"field": "vcpu", "error": "must be from 1 to 8"}]}
    router = Router().on("POST", "/v1/sandbox", 400, json=body)
    with pytest.raises(BadRequestError) as caught:
        await make_client(router).sandboxes.create()
    assert caught.value.errors == [{"field": "vcpu", "error": "must be from 1 to 8"}]


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_parsed(status: int) -> None:
    router = Router().on(
        "POST", "/v1/sandbox/s/start", status, json={"message": "busy"}, headers={"Retry-After": "7"}
    )
    with pytest.raises(APIError) as caught:
        await make_client(router).sandboxes.start("s")
    assert caught.value.retry_after == 7.0
    assert caught.value.headers["retry-after"] == "7"


async def test_a_success_code_other_than_the_promised_one_is_an_error() -> None:
    router = Router().on("POST", "/v1/sandbox/s/pause", 200, json=sandbox_json())
    with pytest.raises(APIError) as caught:
        await make_client(router).sandboxes.pause("s")
    assert caught.value.status_code == 200
    assert "expected HTTP 201, got 200" in caught.value.message


async def test_a_non_json_error_body_still_gives_a_message() -> None:
    router = Router().on("DELETE", "/v1/sandbox/s/", 502, content=b"<html>bad gateway</html>")
    with pytest.raises(ServerError) as caught:
        await make_client(router).sandboxes.delete("s")
    assert caught.value.status_code == 502
    assert caught.value.message == "<html>bad gateway</html>"
    assert caught.value.retry_after is None


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"state": "running"}', b'{"id": ""}'])
async def test_a_malformed_success_body_is_reported(content: bytes) -> None:
    router = Router().on("POST", "/v1/sandbox", 201, content=content)
    with pytest.raises(MalformedResponseError):
        await make_client(router).sandboxes.create()


async def test_network_failures_become_transport_errors() -> None:
    cause = httpx.ConnectError("connection refused")
    router = Router().fail("GET", "/v1/sandbox/s/", cause)
    with pytest.raises(TransportError) as caught:
        await make_client(router).sandboxes.get("s")
    assert type(caught.value) is TransportError
    assert caught.value.__cause__ is cause
    assert caught.value.retryable
    assert "connection refused" in caught.value.message


async def test_http_timeouts_become_atoll_timeouts() -> None:
    cause = httpx.ReadTimeout("read timed out")
    router = Router().fail("GET", "/v1/sandbox/s/", cause)
    with pytest.raises(AtollTimeoutError) as caught:
        await make_client(router).sandboxes.get("s", http_timeout=2.5)
    assert caught.value.__cause__ is cause
    assert isinstance(caught.value, TimeoutError)
    assert "2.5 s" in caught.value.message
