"""The pure argument checks: what passes, and that each failure names its field and range."""

from __future__ import annotations

from typing import Any

import pytest

from atoll import InvalidArgument
from atoll.sdk._validation import (
    check_domain_pattern,
    check_network_policy,
    create_body,
    otel_env_vars,
    process_body,
    sandbox_id,
    sandbox_path,
)


def body(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "template_name": "system/debian:bookworm",
        "vcpu": 1,
        "memory_mib": 1024,
        "timeout_min": 5,
        "auto_pause": False,
        "env_vars": None,
        "network_policy": None,
    }
    args.update(overrides)
    return create_body(**args)


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        ({"vcpu": 8}, "vcpu", 8),
        ({"memory_mib": 512}, "memory", 512),
        ({"memory_mib": 8192}, "memory", 8192),
        ({"timeout_min": 1}, "timeout", 60),
        ({"timeout_min": 480}, "timeout", 28800),
        ({"template_name": "  t  "}, "template_name", "t"),
        ({"template_name": "t" * 64}, "template_name", "t" * 64),
    ],
)
def test_create_body_accepts_the_edges(overrides: dict[str, Any], key: str, value: Any) -> None:
    assert body(**overrides)[key] == value


def test_create_body_range_messages() -> None:
    with pytest.raises(InvalidArgument, match=r"^template_name: must be 1 to 64 characters"):
        body(template_name="t" * 65)
    with pytest.raises(
        InvalidArgument, match=r"^memory_mib: must be an even integer from 512 to 8192 \(MiB\)"
    ):
        body(memory_mib=1023)


def test_create_body_copies_env_vars() -> None:
    env = {"A": "1"}
    built = body(env_vars=env)
    assert built["env_vars"] == env
    assert built["env_vars"] is not env


@pytest.mark.parametrize(
    "domain", ["example.com", "*.example.com", "a-b.c.d", "xn--bcher-kva.example", "EXAMPLE.COM"]
)
def test_good_domain_patterns(domain: str) -> None:
    assert check_domain_pattern("d", domain) == domain


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "localhost",
        "*.com",
        "example.com:443",
        "*example.com",
        "a.*.com",
        "-a.com",
        "a-.com",
        "a..com",
        ".a.com",
        "a.com.",
        "http://a.com",
        "a_b.com",
        7,
        None,
    ],
)
def test_bad_domain_patterns(domain: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"example\.com"):
        check_domain_pattern("d", domain)


def test_a_full_policy_passes_and_is_copied() -> None:
    policy: dict[str, Any] = {
        "mode": "custom",
        "allow_domains": ["pypi.org", "*.pythonhosted.org"],
        "allow_cidrs": ["10.0.0.0/8", "192.168.1.1"],
        "transforms": [
            {
                "domain": "api.example.com",
                "inject_headers": {"Authorization": "Bearer t"},
                "strip_headers": ["Cookie"],
            },
            {"domain": "*.example.org"},
        ],
    }
    checked = check_network_policy(policy)
    assert checked == policy
    assert checked is not policy
    assert checked["transforms"][0] is not policy["transforms"][0]


@pytest.mark.parametrize("mode", ["allow-all", "deny-all", "custom"])
def test_modes(mode: str) -> None:
    assert check_network_policy({"mode": mode}) == {"mode": mode}


@pytest.mark.parametrize(
    ("policy", "field", "match"),
    [
        ("deny-all", "network_policy", "dict"),
        ({}, "network_policy.mode", "allow-all, deny-all, custom"),
        ({"mode": "block"}, "network_policy.mode", "allow-all, deny-all, custom"),
        ({"mode": "custom", "domains": []}, "network_policy", "unknown keys"),
        ({"mode": "custom", "allow_domains": "a.com"}, "network_policy.allow_domains", "at most 50"),
        (
            {"mode": "custom", "allow_domains": [f"d{i}.com" for i in range(51)]},
            "network_policy.allow_domains",
            "at most 50",
        ),
        ({"mode": "custom", "allow_domains": ["a.com", "nope"]}, "network_policy.allow_domains[1]", "domain"),
        (
            {"mode": "custom", "allow_cidrs": [f"10.0.{i}.0/24" for i in range(11)]},
            "network_policy.allow_cidrs",
            "at most 10",
        ),
        ({"mode": "custom", "allow_cidrs": ["fd00::/8"]}, "network_policy.allow_cidrs[0]", "IPv4"),
        ({"mode": "custom", "allow_cidrs": ["10.0.0.0/33"]}, "network_policy.allow_cidrs[0]", "IPv4"),
        (
            {"mode": "custom", "transforms": [{"domain": f"d{i}.com"} for i in range(21)]},
            "network_policy.transforms",
            "at most 20",
        ),
        ({"mode": "custom", "transforms": [{}]}, "network_policy.transforms[0]", "domain"),
        (
            {"mode": "custom", "transforms": [{"domain": "a"}]},
            "network_policy.transforms[0].domain",
            "domain",
        ),
        ({"mode": "custom", "transforms": ["a.com"]}, "network_policy.transforms[0]", "dict"),
        (
            {"mode": "custom", "transforms": [{"domain": "a.com", "headers": {}}]},
            "network_policy.transforms[0]",
            "unknown keys",
        ),
        (
            {"mode": "custom", "transforms": [{"domain": "a.com", "inject_headers": {"X": 1}}]},
            "network_policy.transforms[0].inject_headers['X']",
            "string",
        ),
        (
            {"mode": "custom", "transforms": [{"domain": "a.com", "strip_headers": "Cookie"}]},
            "network_policy.transforms[0].strip_headers",
            "list",
        ),
    ],
)
def test_bad_policies(policy: Any, field: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as caught:
        check_network_policy(policy)
    assert caught.value.field == field


def test_policy_limits_are_inclusive() -> None:
    at_limits: dict[str, Any] = {
        "mode": "custom",
        "allow_domains": [f"d{i}.com" for i in range(50)],
        "allow_cidrs": [f"10.0.{i}.0/24" for i in range(10)],
        "transforms": [{"domain": f"t{i}.com"} for i in range(20)],
    }
    assert check_network_policy(at_limits) == at_limits  # every limit reached, nothing dropped
    extra = {"allow_domains": "d50.com", "allow_cidrs": "10.0.10.0/24", "transforms": {"domain": "t20.com"}}
    for key, item in extra.items():  # and one more than each is refused, naming the list
        with pytest.raises(InvalidArgument) as caught:
            check_network_policy({**at_limits, key: [*at_limits[key], item]})
        assert caught.value.field == f"network_policy.{key}"


def test_otel_env_vars() -> None:
    with pytest.raises(InvalidArgument, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        otel_env_vars({})
    with pytest.raises(InvalidArgument):
        otel_env_vars({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "})
    assert otel_env_vars({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"
    }
    assert otel_env_vars({"OTEL_EXPORTER_OTLP_ENDPOINT": "e", "OTEL_EXPORTER_OTLP_HEADERS": "h=1"}) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "e",
        "OTEL_EXPORTER_OTLP_HEADERS": "h=1",
    }


def test_process_body_uses_the_envs_wire_key() -> None:
    assert process_body(command="ls", cwd=None, env=None, timeout=None) == {"command": "ls"}
    assert process_body(command="ls", cwd="/", env={"A": "b"}, timeout=30) == {
        "command": "ls",
        "cwd": "/",
        "envs": {"A": "b"},
        "timeout": 30,
    }


class _WithId:
    id = "sbx-9"


def test_sandbox_refs() -> None:
    assert sandbox_id("sbx-1") == "sbx-1"
    assert sandbox_id(_WithId()) == "sbx-9"
    assert sandbox_path("a b", "/pause") == "/v1/sandbox/a%20b/pause"
    for bad in ("", object(), 42):
        with pytest.raises(InvalidArgument) as caught:
            sandbox_id(bad)  # type: ignore[arg-type]
        assert caught.value.field == "sandbox"
