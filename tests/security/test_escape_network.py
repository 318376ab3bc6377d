"""Escape attempts over the network. Every target is on this machine: the host's own addresses,
a listener the test opens on the host's loopback, the test server's ports, another test
sandbox, and the metadata address made local in the trap namespace (see ``_trap.py``)."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.network.firewall import service_address
from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import IFACE_PREFIX, INSTANCE, SUBNET, ServerProcess, spare_server
from tests.security._inside import py_json
from tests.security._trap import METADATA, Trap
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

# inside the sandbox: {target: "open" | "closed"} for TCP connects to each (host, port)
PROBE = """
import json, socket, sys
results = {}
for host, port in %r:
    s = socket.socket(); s.settimeout(2)
    results[f"{host}:{port}"] = "open" if s.connect_ex((host, port)) == 0 else "closed"
    s.close()
print(json.dumps(results))
"""


# one DNS query over UDP to the sandbox's nameserver (the host end of its veth); did it answer?
DNS_QUERY = r"""
import json, socket
server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
query = bytes.fromhex("123401000001000000000000") + b"\x01x\x07invalid\x00" + bytes.fromhex("00010001")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(query, (server, 53))
try:
    reply = s.recv(512)
except OSError:
    reply = b""
print(json.dumps({"answered": reply[:2] == query[:2]}))
"""


def probe(http: httpx.Client, sid: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    result: dict[str, str] = py_json(http, sid, PROBE % targets, timeout=120)
    return result


def gateway(http: httpx.Client, sid: str) -> str:
    out = api.run(http, sid, "awk '$2==\"00000000\" {print $3}' /proc/net/route")["stdout"].strip()
    return socket.inet_ntoa(bytes.fromhex(out)[::-1])


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    return [
        line.split()[3].split("/")[0]
        for line in out.splitlines()
        if not line.split()[1].startswith(IFACE_PREFIX) and not line.split()[3].startswith("127.")
    ]


# RTM_NEWROUTE for {dst}/32 via {gateway} on rtnetlink; prints {{"route": "OK" or the errno}}
NETLINK_ROUTE_ADD = """
import errno, json, socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, 0))
def attr(kind, data):
    n = 4 + len(data)
    return struct.pack("HH", n, kind) + data + bytes(-n % 4)
# rtmsg: family, dst_len, src_len, tos, table main, proto boot, scope universe, type unicast, flags
body = struct.pack("BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 3, 0, 1, 0)
body += attr(1, socket.inet_aton("{dst}")) + attr(5, socket.inet_aton("{gateway}"))  # RTA_DST, RTA_GATEWAY
flags = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST, ACK, CREATE, EXCL
s.send(struct.pack("IHHII", 16 + len(body), 24, flags, 1, 0) + body)  # RTM_NEWROUTE
reply = s.recv(4096)
kind = struct.unpack("IHHII", reply[:16])[1]
err = struct.unpack("i", reply[16:20])[0] if kind == 2 else 0  # NLMSG_ERROR carries the errno
print(json.dumps({{"route": "OK" if err == 0 else errno.errorcode.get(-err, str(err))}}))
"""


@pytest.fixture
def loopback_service() -> Iterator[tuple[int, list[str]]]:
    """A TCP service on the host's 127.0.0.1 only; yields its port and the peers it saw."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    peers: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            peers.append(peer[0])
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], peers
    stop.set()
    thread.join()
    listener.close()


@pytest.mark.attempt("reach a service on the host's loopback (127.0.0.1, via the gateway, new routes)")
def test_host_loopback_service(
    http: httpx.Client, pair: tuple[str, str], loopback_service: tuple[int, list[str]], blocked: Blocked
) -> None:
    port, peers = loopback_service
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the host itself reaches it
    time.sleep(0.3)
    peers.clear()
    gw = gateway(http, pair[0])
    seen = probe(http, pair[0], [("127.0.0.1", port), (gw, port), ("127.0.0.2", port)])
    routes = api.run(
        http,
        pair[0],
        f"ip route add 127.0.0.2/32 via {gw} 2>&1; echo $?; "
        "python3 -c \"open('/proc/sys/net/ipv4/conf/all/route_localnet','w').write('1')\" 2>&1 | tail -1",
    )["stdout"]
    assert set(seen.values()) == {"closed"}, seen
    assert peers == []
    if GVISOR:
        # the sentry's network stack has no route_localnet to turn on; a route (RTM_NEWROUTE on
        # rtnetlink, as `ip route add` would send it) needs CAP_NET_ADMIN there too
        assert "route_localnet" in routes and "No such file" in routes, routes
        added = py_json(http, pair[0], NETLINK_ROUTE_ADD.format(dst="127.0.0.2", gateway=gw))
        assert added["route"] in ("EPERM", "EACCES"), added
        blocked(
            f"the sandbox's 127.0.0.1 is its own; the host drops sandbox input; RTM_NEWROUTE "
            f"{added['route']} (no CAP_NET_ADMIN); no route_localnet in the sentry"
        )
        return
    assert "Operation not permitted" in routes or "Read-only" in routes, routes
    blocked("the sandbox's 127.0.0.1 is its own; the host drops sandbox input; no CAP_NET_ADMIN for routes")


@pytest.mark.attempt("reach the control plane (API and router ports) on any host address")
def test_control_plane(
    http: httpx.Client, pair: tuple[str, str], server: ServerProcess, blocked: Blocked
) -> None:
    # the test server listens on 0.0.0.0, so only the firewall stands between sandbox and API
    hosts = [gateway(http, pair[0]), *host_addresses()]
    targets = [(h, p) for h in hosts for p in (server.port, server.router_port)]
    targets += [("127.0.0.1", server.port), ("127.0.0.1", server.router_port)]
    seen = probe(http, pair[0], targets)
    assert set(seen.values()) == {"closed"}, seen
    blocked(f"{len(targets)} address:port pairs closed: the host's firewall drops sandbox -> host")


@pytest.mark.attempt("reach another sandbox")
def test_other_sandbox(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    a, b = pair
    api.run(http, b, "nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
    b_ip = api.sandbox_ip(http, b)
    deadline = time.monotonic() + 10
    while True:  # the host can reach b's server, so it is up ...
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((b_ip, 8000)) == 0:
                break
        assert time.monotonic() < deadline, "the in-sandbox server never came up"
        time.sleep(0.1)
    assert probe(http, a, [(b_ip, 8000)]) == {f"{b_ip}:8000": "closed"}  # ... but a cannot
    blocked("the host's firewall drops sandbox -> sandbox")


@pytest.mark.attempt("reach the cloud metadata address 169.254.169.254 (TCP, UDP, ICMP)")
@pytest.mark.parametrize(
    "policy",
    [None, {"mode": "custom", "allow_cidrs": ["0.0.0.0/0", f"{METADATA}/32"]}],
    ids=["allow-all", "custom-allowing-it"],
)
def test_metadata_address(
    http: httpx.Client, trap: Trap, policy: dict[str, object] | None, blocked: Blocked
) -> None:
    trap.arm()
    sid = api.create(http, **({"network_policy": policy} if policy else {}))["id"]
    try:
        tcp = probe(http, sid, [(METADATA, 80)])
        api.run(
            http,
            sid,
            f"python3 -c \"import socket; s=socket.socket(2, 2); [s.sendto(b'x', ('{METADATA}', 53)) "
            'for _ in range(3)]"; ping -c 2 -W 1 169.254.169.254 >/dev/null 2>&1; true',
        )
    finally:
        http.delete(f"/v1/sandbox/{sid}/")
    assert tcp == {f"{METADATA}:80": "closed"}
    assert trap.hits() == []
    blocked("dropped by the host's firewall (link-local is never forwarded, whatever the policy)")


@pytest.mark.attempt("reach a private network beside the host (172.16/12, 192.168/16, 100.64/10)")
def test_private_ranges(http: httpx.Client, trap: Trap, blocked: Blocked) -> None:
    trap.arm()
    sid = api.create(http)["id"]  # allow-all
    try:
        seen = probe(http, sid, [(address, 80) for address in trap.private])
    finally:
        http.delete(f"/v1/sandbox/{sid}/")
    assert set(seen.values()) == {"closed"}, seen
    assert trap.hits() == []
    blocked("dropped by the host's firewall in every mode (private ranges and the host's networks)")


@pytest.mark.attempt("reach a private range the operator opened, from a policy that does not name it")
def test_opened_private_range(trap: Trap, blocked: Blocked) -> None:
    """A spare server opens one range (``--allow-private-cidr``): only a sandbox whose policy
    names it reaches it; a range named but not opened, and every range from allow-all, stay
    closed. Whatever happens, packets end in the trap namespace on this machine."""
    opened, not_opened, _ = trap.private
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-private-", dir="/var/tmp"))
    spare = spare_server(data_dir, "--allow-private-cidr", f"{opened}/24", tag="p")
    trap.arm()
    try:
        spare.start()
        with httpx.Client(base_url=spare.base_url, headers=spare.headers, timeout=120) as h:
            policy = {"mode": "custom", "allow_cidrs": [f"{opened}/24", f"{not_opened}/24"]}
            naming = api.create(h, network_policy=policy)["id"]
            allow_all = api.create(h)["id"]
            targets = [(address, 80) for address in trap.private]
            by_naming, by_allow_all = probe(h, naming, targets), probe(h, allow_all, targets)
            for sid in (naming, allow_all):
                h.delete(f"/v1/sandbox/{sid}/")
    finally:
        spare.delete_everything()
        spare.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert by_naming == {f"{a}:80": "open" if a == opened else "closed" for a in trap.private}
    assert set(by_allow_all.values()) == {"closed"}, by_allow_all
    assert [hit["to"] for hit in trap.hits() if hit["kind"] == "tcp"] == [opened]
    blocked("opened by the operator and named by the policy: reachable; otherwise dropped")


def test_host_networks_are_closed(server: ServerProcess) -> None:
    """The networks the host is directly on (its LAN or VPC) are in the firewall's closed set."""
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "main", "scope", "link"], capture_output=True, text=True
    ).stdout
    on_link = [line.split()[0] for line in routes.splitlines() if not line.split()[0].startswith("10.")]
    listing = subprocess.run(
        ["nft", "list", "set", "inet", f"atoll_{INSTANCE}", "closed4"], capture_output=True, text=True
    ).stdout
    for network in on_link:
        if "/" in network and not ipaddress.IPv4Network(network).is_private:
            assert network in listing, (network, listing)
    assert "192.168.0.0/16" in listing and "100.64.0.0/10" in listing


@pytest.mark.attempt("reach the resolver or egress proxy port on another host address")
def test_services_bound_to_the_service_address(
    http: httpx.Client, server: ServerProcess, pair: tuple[str, str], trap: Trap, blocked: Blocked
) -> None:
    """Atoll's resolver and egress proxy listen on one address on the host's loopback that only
    the firewall's translation of sandbox traffic reaches, not on every address of the host."""
    assert server.proc is not None
    # the resolver answers the sandbox (through the translation) ...
    assert py_json(http, pair[0], DNS_QUERY) == {"answered": True}
    listening = subprocess.run(["ss", "-Hlntup"], capture_output=True, text=True).stdout
    mine = [line.split()[4] for line in listening.splitlines() if f"pid={server.proc.pid}," in line]
    assert mine, listening
    # ... and nothing of the server's but the API (0.0.0.0 in the tests, on purpose) is on a wildcard
    api_address = f"0.0.0.0:{server.port}"
    wildcard = [a for a in mine if a.startswith(("0.0.0.0:", "*:", "[::]:")) and a != api_address]
    assert wildcard == [], mine
    ports = {int(a.rsplit(":", 1)[1]) for a in mine} - {server.port, server.router_port}
    assert len(ports) == 2, mine  # the resolver's (TCP and UDP) and the proxy's
    targets = [(a, p) for a in host_addresses() if not a.startswith("10.") for p in ports]
    assert targets
    for address, port in targets:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"{address}:{port} answers"
    # they are on the service address (the host itself reaches it on its loopback) ...
    service = service_address(SUBNET)
    tcp_ports = [int(a.rsplit(":", 1)[1]) for a in mine if a.startswith(f"{service}:")]
    assert tcp_ports, mine
    for port in tcp_ports:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((service, port)) == 0, f"{service}:{port}"
    # ... which another machine (here: the trap's namespace, routed through the host) cannot reach
    code = (
        "import socket, sys\n"
        f"for port in {tcp_ports}:\n"
        "    s = socket.socket(); s.settimeout(1)\n"
        f"    sys.stdout.write('open ' if s.connect_ex(('{service}', port)) == 0 else 'closed ')\n"
    )
    outside = subprocess.run(
        ["ip", "netns", "exec", trap.netns, sys.executable, "-c", code], capture_output=True, text=True
    )
    assert outside.stdout.split() == ["closed"] * len(tcp_ports), outside
    blocked("they listen only on the service address; the firewall translates sandbox traffic to it")
