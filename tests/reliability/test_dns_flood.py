"""A sandbox flooding Atoll's DNS resolver (UDP and TCP) cannot slow the others down (issue 15,
finding 4): another sandbox's exec round trip stays within twice its unloaded figure, and the
server's file descriptors stay bounded (TCP connections per source are capped)."""

from __future__ import annotations

import os
import statistics
import time

import httpx
import pytest

from atoll.network.resolver import TCP_MAX
from tests._support import api
from tests._support.server import ServerProcess
from tests.reliability.conftest import SpareServer

pytestmark = [pytest.mark.privileged]
SERVE_ARGS = ("--no-build-template",)  # make test builds it first; never rebuilt under other servers
SAMPLES = 30

FLOOD = r"""
import random, socket, struct, threading, time
ns = open("/etc/resolv.conf").read().split("nameserver")[1].split()[0]
QUESTION = b"\x07example\x03com\x00\x00\x01\x00\x01"
def query():
    return struct.pack(">HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0) + QUESTION
def tcp():
    held = []
    while True:
        try:
            s = socket.create_connection((ns, 53), timeout=1)
            s.send(b"\x00")  # half a length prefix, then nothing
            held.append(s)
        except OSError:
            time.sleep(0.001)
        if len(held) > 900:
            held.pop(0).close()
for _ in range(2):
    threading.Thread(target=tcp, daemon=True).start()
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
for s in socks:
    s.setblocking(False)
while True:
    for s in socks:
        try:
            s.sendto(query(), (ns, 53))
        except OSError:
            pass
"""


def round_trips(http: httpx.Client, sid: str) -> float:
    """The median of SAMPLES exec round trips, in seconds."""
    times = []
    for _ in range(SAMPLES):
        start = time.monotonic()
        assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
        times.append(time.monotonic() - start)
    return statistics.median(times)


def server_fds(server: ServerProcess) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def test_dns_flood_from_one_sandbox_does_not_slow_another(spare: SpareServer) -> None:
    with (
        spare(*SERVE_ARGS) as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http,
    ):
        victim = api.create(http)["id"]
        flooder = api.create(http)["id"]
        try:
            round_trips(http, victim)  # warm
            unloaded = round_trips(http, victim)
            fds_before = server_fds(server)
            api.run(http, flooder, f"cat > /tmp/flood.py <<'EOF'\n{FLOOD}\nEOF")
            api.run(http, flooder, "nohup python3 /tmp/flood.py >/tmp/flood.log 2>&1 & sleep 3")
            loaded = round_trips(http, victim)
            fds_during = server_fds(server)
            alive = api.run(http, flooder, "pgrep -f flood.py >/dev/null && echo running")["stdout"]
            assert alive == "running\n", api.run(http, flooder, "cat /tmp/flood.log")["stdout"]
            print(f"exec round trip: {unloaded * 1000:.1f} ms unloaded, {loaded * 1000:.1f} ms flooded")
            print(f"server fds: {fds_before} before, {fds_during} during the flood")
            assert loaded <= 2 * unloaded + 0.01, (unloaded, loaded)
            assert fds_during - fds_before <= TCP_MAX + 64, (fds_before, fds_during)
        finally:
            api.run(http, flooder, "pkill -f flood.py; true")
            api.delete(http, flooder)
            api.delete(http, victim)
