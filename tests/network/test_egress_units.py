"""Pure pieces of egress: policy matching, the address guard, first-bytes sniffing, rule text."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.dialects import sqlite

from atoll.network import egress_rules
from atoll.network.addressing import Slot
from atoll.network.egress import Attachment
from atoll.network.policy import AddressGuard, EgressPolicy, NetworkPolicy, TransformRule, domain_matches
from atoll.network.sniff import Sniffed, sniff
from atoll.network.transform import mask, rewrite_request_headers
from atoll.store.models import PolicyJSON


def compiled(data: dict[str, Any] | None) -> EgressPolicy:
    """The policy a request's ``network_policy`` (as JSON) means."""
    return EgressPolicy.compile(NetworkPolicy.model_validate(data) if data else None)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("api.example.com", "api.example.com", True),
        ("api.example.com", "API.Example.com.", True),
        ("api.example.com", "x.api.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "b.a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
    ],
)
def test_domain_patterns(pattern: str, name: str, expected: bool) -> None:
    assert domain_matches(pattern, name) is expected


def test_policy_modes() -> None:
    assert compiled(None).mode == "allow-all"
    deny = compiled({"mode": "deny-all", "allow_cidrs": ["1.2.3.0/24"]})
    assert not deny.allows_name("a.b") and not deny.learns_names and not deny.cidrs
    custom = compiled(
        {"mode": "custom", "allow_domains": ["a.example"], "transforms": [{"domain": "t.example"}]}
    )
    assert custom.allows_name("t.example") and custom.allows_name("a.example")
    assert not custom.allows_name("b.example")
    assert custom.transform_for("t.example") is not None and custom.transform_for("a.example") is None


def test_the_request_model_compiles_to_the_policy() -> None:
    # what the API validated is compiled as it is (no dict in between)
    request = NetworkPolicy.model_validate(
        {
            "mode": "custom",
            "allow_domains": ["A.example", "*.b.example"],
            "allow_cidrs": ["10.20.0.0/16"],
            "transforms": [
                {"domain": "T.example", "inject_headers": {"X-K": "v"}, "strip_headers": ["Cookie"]}
            ],
        }
    )
    policy = EgressPolicy.compile(request)
    assert policy.mode == "custom" and policy.domains == ("a.example", "*.b.example")
    assert policy.cidrs == (ipaddress.IPv4Network("10.20.0.0/16"),)
    assert policy.transforms == (TransformRule("t.example", (("X-K", "v"),), frozenset({"cookie"})),)
    assert EgressPolicy.compile(None) == EgressPolicy()


def test_the_policy_is_one_frozen_type_through_the_store() -> None:
    given = {"mode": "custom", "allow_domains": ["a.example"], "transforms": [{"domain": "t.example"}]}
    policy = NetworkPolicy.model_validate(given)
    with pytest.raises(ValidationError):  # frozen: nobody changes it on the way
        policy.mode = "allow-all"
    assert isinstance(policy.allow_domains, tuple) and isinstance(policy.transforms, tuple)
    assert policy.wire() == given  # the wire and stored form: what the request gave, nothing more
    column = PolicyJSON()
    stored = column.process_bind_param(policy, sqlite.dialect())
    assert stored == given
    read = column.process_result_value(stored, sqlite.dialect())
    assert read == policy and read is not None and read.wire() == given  # unset fields stay unset
    assert column.process_bind_param(None, sqlite.dialect()) is None
    assert column.process_result_value(None, sqlite.dialect()) is None
    with pytest.raises(ValidationError):  # a stored policy is held to the request's rules too
        column.process_result_value({"mode": "custom", "allow_domains": ["no-dot"]}, sqlite.dialect())


def test_attachment_carries_the_compiled_policy() -> None:
    slot = Slot(1, "10.250.0.1", "10.250.0.2", 30, "ns1", "if1")
    policy = compiled({"mode": "deny-all"})
    typed = Attachment(sandbox_id="s", org_id="o", policy=policy, slot=slot, sandbox_dir=Path("/nowhere"))
    assert typed.policy is policy


def test_transform_repr_hides_secrets() -> None:
    policy = compiled(
        {"mode": "custom", "transforms": [{"domain": "t.example", "inject_headers": {"A": "s3cret"}}]}
    )
    assert "s3cret" not in repr(policy)
    assert policy.secrets() == ["s3cret"]


def test_guard() -> None:
    guard = AddressGuard(subnet="10.9.0.0/16", deny_cidrs=["192.168.0.0/16"], local=["192.0.2.2"])
    for address in ("169.254.169.254", "127.0.0.1", "10.9.3.4", "192.168.1.1", "192.0.2.2", "224.0.0.1"):
        assert guard.forbidden(ipaddress.IPv4Address(address)), address
    assert not guard.forbidden(ipaddress.IPv4Address("198.51.100.10"))


def test_guard_closes_private_ranges_unless_opened_and_named() -> None:
    def ip(a: str) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(a)

    allow_all = compiled(None)
    naming = compiled({"mode": "custom", "allow_cidrs": ["10.20.0.0/16"]})
    guard = AddressGuard(subnet="10.9.0.0/16", opened=["10.20.0.0/16"]).with_local([], ["203.0.113.0/24"])
    for address in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "198.18.0.1", "203.0.113.7"):
        assert guard.forbidden(ip(address)), address
        assert guard.closed_to(naming, ip(address)), address
    assert not guard.forbidden(ip("10.20.0.5"))  # opened by the operator ...
    assert guard.closed_to(allow_all, ip("10.20.0.5"))  # ... but allow-all does not name it
    assert not guard.closed_to(naming, ip("10.20.0.5"))  # a policy naming it reaches it
    assert not guard.closed_to(allow_all, ip("198.51.100.10"))


def client_hello(server_name: str | None) -> bytes:
    """A real ClientHello from Python's ssl module, captured through a socket pair."""
    a, b = socket.socketpair()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def handshake() -> None:
        try:
            context.wrap_socket(a, server_hostname=server_name)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=handshake)
    thread.start()
    data = b.recv(65536)
    b.close()
    thread.join()
    a.close()
    return data


def test_sniff_tls_and_http() -> None:
    assert sniff(client_hello("api.example.com")) == Sniffed("tls", "api.example.com")
    assert sniff(client_hello(None)) == Sniffed("tls", None)
    hello = client_hello("x.example.com")
    assert sniff(hello[:20]) is None  # more is needed
    assert sniff(b"GET / HTTP/1.1\r\nHost: Api.Example.com:8080\r\n\r\n") == Sniffed(
        "http", "api.example.com"
    )
    assert sniff(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n") == Sniffed("http", None)
    assert sniff(b"GET /long") is None
    assert sniff(b"SSH-2.0-OpenSSH\r\n") == Sniffed("other")


def test_header_rewrite_and_mask() -> None:
    policy = compiled(
        {
            "mode": "custom",
            "transforms": [
                {
                    "domain": "t.example",
                    "inject_headers": {"Authorization": "Bearer S"},
                    "strip_headers": ["X-Debug"],
                }
            ],
        }
    )
    rule = policy.transform_for("t.example")
    assert rule is not None
    headers = [
        (b"host", b"t.example"),
        (b"x-debug", b"1"),
        (b"authorization", b"mine"),
        (b"expect", b"100-continue"),
    ]
    assert rewrite_request_headers(headers, rule) == [
        (b"host", b"t.example"),
        (b"authorization", b"Bearer S"),
    ]
    assert mask([(b"x-echo", b"got Bearer S")], [b"Bearer S"]) == [(b"x-echo", b"got [redacted by atoll]")]


def test_rule_batches_name_only_their_slot() -> None:
    policy = compiled({"mode": "custom", "allow_cidrs": ["1.2.3.0/24"], "allow_domains": ["a.b"]})
    text = egress_rules.attach("atoll_x", index=7, ifname="atx7", policy=policy, proxy_port=4242)
    assert "redirect to :4242" in text and "1.2.3.0/24" in text
    objects = egress_rules.objects(policy)
    assert objects["sets"] == ("cidr", "dns") and "egress_nat" in objects["maps"]
    detach = egress_rules.detach("atoll_x", index=7, ifname="atx7", **objects)
    assert detach.index("delete element") < detach.index("delete chain inet atoll_x s7_out")
    assert egress_rules.slot_of_object("s12_deny_new") == 12 and egress_rules.slot_of_object("deny") is None
