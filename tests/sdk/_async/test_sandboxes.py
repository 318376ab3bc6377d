"""The sandboxes client against a fake control plane: exact wire requests, no request on bad input."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from atoll import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_TEMPLATE_NAME,
    DEFAULT_TIMEOUT_MIN,
    DEFAULT_VCPU,
    AsyncClient,
    AsyncSandbox,
    AsyncSandboxesClient,
    AsyncTransport,
    InvalidArgument,
    SandboxData,
    SandboxList,
    SandboxListItem,
    SandboxState,
    SandboxStatus,
)

from .._mock import Router, sandbox_json, status_json

DEFAULT_BODY = {
    "template_name": "system/debian:bookworm",
    "vcpu": 1,
    "memory": 1024,
    "timeout": 300,
    "auto_pause": False,
}


def make_client(router: Router, **settings: Any) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
        **settings,
    )


def raw_client(router: Router) -> AsyncSandboxesClient[SandboxData | SandboxStatus]:
    transport = AsyncTransport(
        "k", "http://api.test", http_client=httpx.AsyncClient(transport=router.transport())
    )
    return AsyncSandboxesClient(transport, sandbox_domain="sbx.test")


def test_defaults_are_the_contract() -> None:
    assert (DEFAULT_TEMPLATE_NAME, DEFAULT_VCPU, DEFAULT_MEMORY_MIB, DEFAULT_TIMEOUT_MIN) == (
        "system/debian:bookworm",
        1,
        1024,
        5,
    )


async def test_create_sends_exactly_the_default_body() -> None:
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json())
    sandbox = await make_client(router).sandboxes.create()

    request = router.last
    assert (request.method, str(request.url)) == ("POST", "http://api.test/v1/sandbox")
    assert request.headers["content-type"] == "application/json"
    assert router.last_json() == DEFAULT_BODY
    assert list(router.last_json()) == list(DEFAULT_BODY)
    assert isinstance(sandbox, AsyncSandbox)
    assert sandbox.id == "sbx-abc123"
    assert sandbox.state == "running"
    assert sandbox.state is SandboxState.RUNNING
    assert (sandbox.vcpu, sandbox.memory, sandbox.timeout) == (1, 1024, 300)
    assert isinstance(sandbox.data, SandboxData)
    assert sandbox.network_policy is None


async def test_create_converts_minutes_and_sends_optional_fields_only_when_set() -> None:
    policy = {"mode": "custom", "allow_domains": ["pypi.org", "*.github.com"], "allow_cidrs": ["10.0.0.0/8"]}
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json(network_policy=policy))
    sandbox = await make_client(router).sandboxes.create(
        template_name="acme/python:3.12",
        vcpu=2,
        memory_mib=2048,
        timeout_min=480,
        auto_pause=True,
        env_vars={"A": "1"},
        network_policy={
            "mode": "custom",
            "allow_domains": ["pypi.org", "*.github.com"],
            "allow_cidrs": ["10.0.0.0/8"],
        },
    )
    assert router.last_json() == {
        "template_name": "acme/python:3.12",
        "vcpu": 2,
        "memory": 2048,
        "timeout": 28800,
        "auto_pause": True,
        "env_vars": {"A": "1"},
        "network_policy": policy,
    }
    assert sandbox.network_policy == policy


async def test_create_without_factory_returns_raw_data() -> None:
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json(state="hibernating"))
    data = await raw_client(router).create()
    assert isinstance(data, SandboxData)
    assert data.state == "hibernating"  # unknown states are kept as strings


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vcpu": 0}, "vcpu"),
        ({"vcpu": 9}, "vcpu"),
        ({"vcpu": True}, "vcpu"),
        ({"vcpu": 1.5}, "vcpu"),
        ({"memory_mib": 511}, "memory_mib"),
        ({"memory_mib": 513}, "memory_mib"),
        ({"memory_mib": 1025}, "memory_mib"),
        ({"memory_mib": 8194}, "memory_mib"),
        ({"timeout_min": 0}, "timeout_min"),
        ({"timeout_min": 481}, "timeout_min"),
        ({"template_name": ""}, "template_name"),
        ({"template_name": "   "}, "template_name"),
        ({"template_name": "t" * 65}, "template_name"),
        ({"auto_pause": "yes"}, "auto_pause"),
        ({"env_vars": {"A": 1}}, "env_vars['A']"),
        ({"env_vars": {"": "x"}}, "env_vars"),
        ({"network_policy": {"mode": "open"}}, "network_policy.mode"),
        (
            {"network_policy": {"mode": "custom", "allow_domains": ["localhost"]}},
            "network_policy.allow_domains[0]",
        ),
        ({"network_policy": {"mode": "custom", "allowed_domains": []}}, "network_policy"),
        ({"http_timeout": 0}, "http_timeout"),
    ],
)
async def test_create_rejects_bad_arguments_before_sending(kwargs: dict[str, Any], field: str) -> None:
    router = Router()
    with pytest.raises(InvalidArgument) as caught:
        await make_client(router).sandboxes.create(**kwargs)
    assert caught.value.field == field
    assert caught.value.status_code is None
    assert router.requests == []


async def test_create_error_message_names_the_range() -> None:
    with pytest.raises(InvalidArgument, match=r"vcpu: must be an integer from 1 to 8, got 9"):
        await make_client(Router()).sandboxes.create(vcpu=9)
    with pytest.raises(InvalidArgument, match=r"memory_mib: must be an even integer from 512 to 8192"):
        await make_client(Router()).sandboxes.create(memory_mib=513)
    with pytest.raises(InvalidArgument, match=r"timeout_min: must be an integer from 1 to 480 \(minutes\)"):
        await make_client(Router()).sandboxes.create(timeout_min=481)


async def test_otel_export_injects_local_exporter_settings_and_caller_keys_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-token=abc")
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json())
    await make_client(router).sandboxes.create(
        otel_export=True, env_vars={"OTEL_EXPORTER_OTLP_HEADERS": "mine", "B": "2"}
    )
    body = router.last_json()
    assert body["env_vars"] == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "mine",
        "B": "2",
    }
    assert "otel_export" not in body


async def test_otel_export_without_endpoint_fails_before_sending() -> None:
    router = Router()
    with pytest.raises(InvalidArgument, match="OTEL_EXPORTER_OTLP_ENDPOINT") as caught:
        await make_client(router).sandboxes.create(otel_export=True)
    assert caught.value.field == "otel_export"
    assert router.requests == []


async def test_telemetry_is_a_deprecated_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json())
    client = make_client(router)

    with pytest.warns(DeprecationWarning, match="otel_export") as record:
        await client.sandboxes.create(telemetry=True)
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert router.last_json()["env_vars"] == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}

    with pytest.warns(DeprecationWarning):
        await client.sandboxes.create(telemetry=True, otel_export=False)  # otel_export wins
    assert "env_vars" not in router.last_json()


async def test_no_otel_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json())
    await make_client(router).sandboxes.create()
    assert router.last_json() == DEFAULT_BODY


async def test_get_uses_the_slash_path_and_returns_status() -> None:
    router = Router().on("GET", "/v1/sandbox/sbx-abc123/", json=status_json(state="paused"))
    sandbox = await make_client(router).sandboxes.get("sbx-abc123")
    assert str(router.last.url) == "http://api.test/v1/sandbox/sbx-abc123/"
    assert isinstance(sandbox.data, SandboxStatus)
    assert sandbox.state == SandboxState.PAUSED
    with pytest.raises(AttributeError):
        _ = sandbox.network_policy  # GET does not carry it


@pytest.mark.parametrize(
    "ref",
    [
        "sbx-abc123",
        SandboxData(id="sbx-abc123"),
        SandboxStatus(id="sbx-abc123"),
        SandboxListItem(id="sbx-abc123"),
    ],
)
async def test_a_sandbox_ref_is_an_id_or_anything_with_an_id(ref: Any) -> None:
    router = Router().on("GET", "/v1/sandbox/sbx-abc123/", json=status_json())
    data = await raw_client(router).get(ref)
    assert data.id == "sbx-abc123"


async def test_odd_ids_are_quoted_and_empty_ones_rejected() -> None:
    router = Router().on("DELETE", "/v1/sandbox/a%2Fb/", 204)
    await raw_client(router).delete("a/b")
    assert router.last.url.raw_path == b"/v1/sandbox/a%2Fb/"
    with pytest.raises(InvalidArgument) as caught:
        await raw_client(router).delete("  ")
    assert caught.value.field == "sandbox"


async def test_list_sends_hyphenated_query_keys() -> None:
    answer = {
        "items": [{"id": "sbx-1", "template_id": "t", "pod_id": "p", "state": "running", "created_at": "c"}],
        "total_items": 7,
    }
    router = Router().on("GET", "/v1/sandboxes", json=answer)
    client = make_client(router)

    page = await client.sandboxes.list()
    assert dict(router.last.url.params) == {
        "sort": "created_at",
        "order-by": "desc",
        "page": "1",
        "page-size": "20",
    }
    assert isinstance(page, SandboxList)
    assert page.total_items == 7
    assert page.items == [
        SandboxListItem(id="sbx-1", template_id="t", state="running", pod_id="p", created_at="c")
    ]

    await client.sandboxes.list(
        state=SandboxState.STOPPED, sort="state", order_by="asc", page=3, page_size=100
    )
    assert dict(router.last.url.params) == {
        "sort": "state",
        "order-by": "asc",
        "page": "3",
        "page-size": "100",
        "state": "stopped",
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"state": "deleted"}, "state"),
        ({"state": "bogus"}, "state"),
        ({"sort": "name"}, "sort"),
        ({"order_by": "up"}, "order_by"),
        ({"page": 0}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
    ],
)
async def test_list_rejects_bad_arguments_before_sending(kwargs: dict[str, Any], field: str) -> None:
    router = Router()
    with pytest.raises(InvalidArgument) as caught:
        await make_client(router).sandboxes.list(**kwargs)
    assert caught.value.field == field
    assert router.requests == []


async def test_pause_posts_no_body_and_expects_201() -> None:
    router = Router().on("POST", "/v1/sandbox/sbx-abc123/pause", 201, json=sandbox_json(state="paused"))
    sandbox = await make_client(router).sandboxes.pause("sbx-abc123")
    assert router.last.content == b""
    assert "content-type" not in router.last.headers
    assert sandbox.state == SandboxState.PAUSED
    assert isinstance(sandbox.data, SandboxData)


@pytest.mark.parametrize("action", ["stop", "start"])
async def test_stop_and_start_post_and_expect_200(action: str) -> None:
    router = Router().on("POST", f"/v1/sandbox/sbx-abc123/{action}", json=sandbox_json(state="stopped"))
    sandbox = await getattr(make_client(router).sandboxes, action)("sbx-abc123")
    assert sandbox.state == SandboxState.STOPPED
    assert router.last.content == b""


async def test_delete_expects_204() -> None:
    router = Router().on("DELETE", "/v1/sandbox/sbx-abc123/", 204)
    await make_client(router).sandboxes.delete("sbx-abc123")
    assert str(router.last.url) == "http://api.test/v1/sandbox/sbx-abc123/"


async def test_every_method_takes_an_http_timeout() -> None:
    router = (
        Router()
        .on("POST", "/v1/sandbox", 201, json=sandbox_json())
        .on("GET", "/v1/sandbox/s/", json=status_json())
        .on("GET", "/v1/sandboxes", json={"items": [], "total_items": 0})
        .on("POST", "/v1/sandbox/s/pause", 201, json=sandbox_json())
        .on("POST", "/v1/sandbox/s/stop", json=sandbox_json())
        .on("POST", "/v1/sandbox/s/start", json=sandbox_json())
        .on("DELETE", "/v1/sandbox/s/", 204)
    )
    sandboxes = make_client(router, timeout=42.0).sandboxes
    await sandboxes.get("s")
    assert router.last_timeout() == 42.0
    await sandboxes.create(http_timeout=1.5)
    assert router.last_timeout() == 1.5
    await sandboxes.get("s", http_timeout=2)
    assert router.last_timeout() == 2.0
    await sandboxes.list(http_timeout=3)
    assert router.last_timeout() == 3.0
    for index, method in enumerate((sandboxes.pause, sandboxes.stop, sandboxes.start, sandboxes.delete)):
        await method("s", http_timeout=10 + index)
        assert router.last_timeout() == 10.0 + index


async def test_create_accepts_the_echoed_policy_as_is() -> None:
    policy = {
        "mode": "custom",
        "transforms": [
            {
                "domain": "api.openai.com",
                "inject_headers": {"Authorization": "Bearer x"},
                "strip_headers": ["Cookie"],
            }
        ],
    }
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json(network_policy=policy))
    await make_client(router).sandboxes.create(network_policy=json.loads(json.dumps(policy)))
    assert router.last_json()["network_policy"] == policy
