"""Escape attempts over the network. Every target is on this machine: the host's own addresses,
a listener the test opens on the host's loopback, the test server's ports, another test
sandbox, and the metadata address made local in the trap namespace (see ``_trap.py``)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import IFACE_PREFIX, ServerProcess
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
