"""Egress policy end to end: real server, real sandboxes, real nftables, and a lab of test hosts
(see _lab.py). Every packet goes to loopback, this host, or the lab namespace."""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess
from tests.network._lab import METADATA, ZONE, Lab

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

NETCHECK = (Path(__file__).parent / "_netcheck.py").read_text()
SECRET = "atoll-test-secret-" + secrets.token_hex(12)
API = f"api.{ZONE}"


def probe(http: httpx.Client, sid: str, *args: str) -> dict[str, Any]:
    result = api.run(
        http, sid, "python3 /tmp/netcheck.py " + " ".join(shlex.quote(a) for a in args), timeout=60
    )
    lines = result["stdout"].strip().splitlines()
    assert lines, result
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def make(http: httpx.Client, policy: dict[str, Any] | None) -> str:
    body = {"network_policy": policy} if policy is not None else {}
    created = api.create(http, **body)
    if policy is not None:
        assert created["network_policy"] == policy  # echoed unchanged
    sid: str = created["id"]
    api.run(http, sid, f"cat > /tmp/netcheck.py <<'NETCHECK_EOF'\n{NETCHECK}\nNETCHECK_EOF")
    return sid


@pytest.fixture(scope="module")
def sandboxes(server: ServerProcess, lab: Lab) -> Iterator[dict[str, str]]:
    policies: dict[str, dict[str, Any] | None] = {
        "default": None,
        "deny": {"mode": "deny-all"},
        "cidr": {"mode": "custom", "allow_cidrs": [lab.cidr]},
        "domains": {
            "mode": "custom",
            "allow_domains": [API, f"*.pkg.{ZONE}", f"meta.{ZONE}", f"loop.{ZONE}", f"gw.{ZONE}"],
        },
        "transform": {
            "mode": "custom",
            "allow_domains": [f"*.pkg.{ZONE}"],
            "transforms": [
                {
                    "domain": API,
                    "inject_headers": {"Authorization": f"Bearer {SECRET}"},
                    "strip_headers": ["X-Debug"],
                }
            ],
        },
        "wide": {"mode": "custom", "allow_cidrs": ["0.0.0.0/0", f"{METADATA}/32"]},
    }
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        made = {name: make(http, policy) for name, policy in policies.items()}
        yield made
        for sid in made.values():
            http.delete(f"/v1/sandbox/{sid}/")


def network(http: httpx.Client, sid: str) -> dict[str, Any]:
    r = http.get(f"/v1/sandbox/{sid}/network")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


# validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"mode": "sometimes"}, "mode"),
        ({"mode": "custom", "allow_domains": ["no-dot"]}, "allow_domains"),
        ({"mode": "custom", "allow_domains": ["api.example.com:443"]}, "allow_domains"),
        ({"mode": "custom", "allow_cidrs": ["fd00::/8"]}, "allow_cidrs"),
        ({"mode": "custom", "allow_cidrs": [f"10.0.{i}.0/24" for i in range(11)]}, "allow_cidrs"),
        ({"mode": "custom", "transforms": [{"domain": "x"}]}, "transforms"),
    ],
)
def test_invalid_policies_get_400_naming_the_field(
    http: httpx.Client, policy: dict[str, Any], field: str
) -> None:
    r = http.post("/v1/sandbox", json={"network_policy": policy})
    assert r.status_code == 400, r.text
    assert any(field in e["field"] for e in r.json()["errors"]), r.json()


# deny-all --------------------------------------------------------------------------------------
def test_deny_all_blocks_tcp_udp_and_dns(http: httpx.Client, sandboxes: dict[str, str], lab: Lab) -> None:
    sid = sandboxes["deny"]
    before = set(lab.dns_queries())
    assert not probe(http, sid, "tcp", lab.hosts["api"], "80")["ok"]
    assert not probe(http, sid, "tcp", lab.hosts["api"], "7", "hi")["ok"]
    assert not probe(http, sid, "udp", lab.hosts["api"], "7")["ok"]
    assert not probe(http, sid, "dns", lab.hosts["dns"], API)["ok"]  # the test DNS server, directly
    assert not probe(http, sid, "resolve", API)["ok"]  # and through Atoll's resolver
    assert set(lab.dns_queries()) == before  # nothing reached the upstream
    counters = network(http, sid)
    assert counters["mode"] == "deny-all"
    assert counters["denied"]["connections"] >= 3
    assert counters["allowed"]["connections"] == 0


def test_deny_all_sandbox_still_works(http: httpx.Client, sandboxes: dict[str, str]) -> None:
    sid = sandboxes["deny"]
    assert api.run(http, sid, "echo alive")["stdout"] == "alive\n"
    api.run(http, sid, "cd /tmp && nohup python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1 &")
    out = api.run(
        http,
        sid,
        # netcheck exits 0 either way (its verdict is the JSON "ok"): retry until it says ok
        "for i in $(seq 150); do r=$(python3 /tmp/netcheck.py http 127.0.0.1 8123 x); "
        'case "$r" in *\'"ok": true\'*) break;; esac; sleep 0.1; done; printf "%s\\n" "$r"',
        timeout=90,  # generous: on a loaded host the in-sandbox server can take seconds to start
    )
    assert json.loads(out["stdout"].strip().splitlines()[-1])["ok"], out


# allow-all -------------------------------------------------------------------------------------
def test_allow_all_is_the_default(http: httpx.Client, sandboxes: dict[str, str], lab: Lab) -> None:
    sid = sandboxes["default"]
    assert probe(http, sid, "resolve", API)["addresses"] == [lab.hosts["api"]]
    assert probe(http, sid, "resolve", f"other.{ZONE}")["addresses"] == [lab.hosts["other"]]
    assert "hello " + lab.hosts["other"] in probe(http, sid, "http", lab.hosts["other"], "80", "x")["data"]
    assert probe(http, sid, "udp", lab.hosts["outside"], "7")["data"].startswith(
        "udp " + lab.hosts["outside"]
    )
    assert probe(http, sid, "tls", lab.hosts["api"], "443", API)["ok"]
    assert network(http, sid)["allowed"]["connections"] >= 3


# custom: CIDRs ---------------------------------------------------------------------------------
def test_custom_cidr_reaches_only_its_range(http: httpx.Client, sandboxes: dict[str, str], lab: Lab) -> None:
    sid = sandboxes["cidr"]
    assert "hello " + lab.hosts["cidr"] in probe(http, sid, "http", lab.hosts["cidr"], "80", "x")["data"]
    assert probe(http, sid, "udp", lab.hosts["cidr"], "7")["ok"]
    assert probe(http, sid, "tcp", lab.hosts["cidr"], "2222")["data"].startswith("banner")
    for host in ("outside", "api", "dns"):
        assert not probe(http, sid, "tcp", lab.hosts[host], "80")["ok"], host
    assert not probe(http, sid, "udp", lab.hosts["outside"], "7")["ok"]
    assert not probe(http, sid, "resolve", f"cidr.{ZONE}")["ok"]  # no domains allowed: nothing resolves


# custom: domains -------------------------------------------------------------------------------
def test_allowed_names_resolve_and_connect(http: httpx.Client, sandboxes: dict[str, str], lab: Lab) -> None:
    sid = sandboxes["domains"]
    api_ip, pkg_ip = lab.hosts["api"], lab.hosts["pkg"]
    assert probe(http, sid, "resolve", API)["addresses"] == [api_ip]
    for name in (f"a.pkg.{ZONE}", f"deep.b.pkg.{ZONE}"):
        assert probe(http, sid, "resolve", name)["addresses"] == [pkg_ip]
    assert f"hello {api_ip} host={API}" in probe(http, sid, "http", api_ip, "80", API)["data"]
    assert probe(http, sid, "tls", api_ip, "443", API)["ok"]
    assert probe(http, sid, "tls", pkg_ip, "443", f"deep.b.pkg.{ZONE}")["ok"]
    assert probe(http, sid, "tcp", api_ip, "7", "echo-me")["data"] == "echo-me\n"  # no name in the protocol
    assert probe(http, sid, "tcp", api_ip, "2222", "x")["data"].startswith(f"banner {api_ip}")  # server first


def test_other_names_neither_resolve_nor_connect(
    http: httpx.Client, sandboxes: dict[str, str], lab: Lab
) -> None:
    sid = sandboxes["domains"]
    assert probe(http, sid, "resolve", API)["ok"]  # learn api's address first
    assert probe(http, sid, "resolve", f"a.pkg.{ZONE}")["ok"]
    seen = len(lab.dns_queries())
    for name in (f"other.{ZONE}", f"alias.{ZONE}", f"pkg.{ZONE}"):  # "*.pkg" is not "pkg" itself
        assert not probe(http, sid, "resolve", name)["ok"], name
    queried = lab.dns_queries()[seen:]
    assert f"other.{ZONE}" not in queried and f"alias.{ZONE}" not in queried  # never sent upstream
    other, api_ip = lab.hosts["other"], lab.hosts["api"]
    assert not probe(http, sid, "http", other, "80", f"other.{ZONE}")["ok"]  # by IP
    assert not probe(http, sid, "tcp", other, "7")["ok"]
    assert not probe(http, sid, "tls", other, "443", API)["ok"]  # an allowed SNI to another address
    assert not probe(http, sid, "tls", api_ip, "443", f"other.{ZONE}")["ok"]  # another SNI on a shared IP
    assert not probe(http, sid, "tls", api_ip, "443", f"alias.{ZONE}")["ok"]
    assert not probe(http, sid, "http", api_ip, "80", f"other.{ZONE}")["ok"]  # another Host on a shared IP
    assert not probe(http, sid, "tls", api_ip, "443", "-")["ok"]  # TLS that names nothing
    assert not probe(http, sid, "tls", lab.hosts["pkg"], "443", API)["ok"]  # api was not learned there
    assert not probe(http, sid, "udp", api_ip, "7")["ok"]  # learned names carry TCP only
    assert not probe(http, sid, "dns", lab.hosts["dns"], f"other.{ZONE}")["ok"]  # no other resolver
    counters = network(http, sid)
    assert counters["denied"]["connections"] >= 8
    assert counters["dns"]["refused"] >= 3


def test_allowed_names_never_open_forbidden_addresses(
    http: httpx.Client, sandboxes: dict[str, str], lab: Lab
) -> None:
    sid = sandboxes["domains"]
    for name in (f"meta.{ZONE}", f"loop.{ZONE}", f"gw.{ZONE}"):  # allowed names, forbidden addresses
        assert not probe(http, sid, "resolve", name)["ok"], name
    assert not probe(http, sid, "http", METADATA, "80", METADATA)["ok"]
    assert not probe(http, sid, "tcp", METADATA, "7")["ok"]


# transforms ------------------------------------------------------------------------------------
def test_transform_injects_and_strips_headers(
    http: httpx.Client, sandboxes: dict[str, str], lab: Lab
) -> None:
    sid = sandboxes["transform"]
    assert api.run(http, sid, "echo $SSL_CERT_FILE")["stdout"].strip() == "/etc/ssl/certs/ca-certificates.crt"
    path = "/t-" + secrets.token_hex(4)
    result = probe(
        http, sid, "tls", API, "443", API, path, "verify", "X-Debug: 1", "Authorization: Bearer mine"
    )
    assert result["ok"], result
    assert result["issuer"].startswith("Atoll egress CA")  # terminated, verified by the sandbox's trust store
    assert SECRET not in result["data"]
    seen = [r for r in lab.https_requests() if r["path"] == path]
    assert len(seen) == 1, seen
    headers = {k.lower(): v for k, v in seen[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert "x-debug" not in headers
    assert network(http, sid)["proxy"]["transformed"] >= 1


def test_other_allowed_domains_stay_opaque(http: httpx.Client, sandboxes: dict[str, str], lab: Lab) -> None:
    sid = sandboxes["transform"]
    name = f"a.pkg.{ZONE}"
    assert not probe(http, sid, "tls", name, "443", name, "/", "verify")["ok"]  # the lab's CA, not ours
    assert probe(http, sid, "tls", name, "443", name)["ok"]
    assert not probe(http, sid, "tls", lab.hosts["other"], "443", f"other.{ZONE}")["ok"]


def test_transform_secrets_never_enter_the_sandbox(
    http: httpx.Client, sandboxes: dict[str, str], server: ServerProcess
) -> None:
    sid = sandboxes["transform"]
    assert probe(http, sid, "tls", API, "443", API, "/x", "verify")["ok"]
    result = probe(http, sid, "secret", base64.b64encode(SECRET.encode()).decode())
    assert result["ok"], result["found"]
    body = network(http, sid)
    assert SECRET not in json.dumps(body)
    assert SECRET not in http.get(f"/v1/sandbox/{sid}/").text
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert SECRET not in ps  # nor on the host's command lines


# always denied ---------------------------------------------------------------------------------
def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()} - {"127.0.0.1"})


@pytest.mark.parametrize("name", ["default", "deny", "cidr", "domains", "transform", "wide"])
def test_metadata_host_and_control_plane_are_unreachable_in_every_mode(
    http: httpx.Client, sandboxes: dict[str, str], server: ServerProcess, name: str
) -> None:
    sid = sandboxes[name]
    assert not probe(http, sid, "http", METADATA, "80", METADATA)["ok"]
    assert not probe(http, sid, "tcp", METADATA, "7")["ok"]
    assert not probe(http, sid, "udp", METADATA, "7")["ok"]
    mine = ipaddress.IPv4Address(api.sandbox_ip(http, sid))
    targets = {*host_addresses(), str(mine - 1)}  # the host end of the sandbox's veth
    script = "; ".join(
        f"python3 /tmp/netcheck.py tcp {t} {port}"
        for t in sorted(targets)
        for port in (server.port, server.router_port)
    )
    results = [json.loads(line) for line in api.run(http, sid, script, timeout=120)["stdout"].splitlines()]
    assert results and not any(r["ok"] for r in results), results


# lifecycle -------------------------------------------------------------------------------------
def test_stop_and_start_keep_the_policy(http: httpx.Client, lab: Lab) -> None:
    sid = make(http, {"mode": "custom", "allow_cidrs": [lab.cidr]})
    try:
        assert probe(http, sid, "tcp", lab.hosts["cidr"], "7", "a")["ok"]
        r = http.post(f"/v1/sandbox/{sid}/stop")
        assert r.status_code == 200 and r.json()["network_policy"]["allow_cidrs"] == [lab.cidr]
        assert network(http, sid) == {**network(http, sid), "attached": False}
        assert http.post(f"/v1/sandbox/{sid}/start").status_code == 200
        assert probe(http, sid, "tcp", lab.hosts["cidr"], "7", "b")["ok"]
        assert not probe(http, sid, "tcp", lab.hosts["outside"], "7", "c")["ok"]
    finally:
        api.delete(http, sid)


def test_metrics_are_per_sandbox(http: httpx.Client, sandboxes: dict[str, str]) -> None:
    r = http.get("/v1/metrics")
    assert r.status_code == 200
    assert f'atoll_egress_connections_total{{sandbox="{sandboxes["deny"]}",verdict="denied"}}' in r.text
    assert "atoll_egress_dns_queries_total" in r.text
    assert httpx.get(str(http.base_url) + "/v1/metrics").status_code == 401
