"""A local stand-in for addresses a sandbox must never reach, so an escape attempt that gets
through lands here, on this machine, and is recorded.

One network namespace (``attrap-<instance>``) holds the cloud-metadata address 169.254.169.254
and one address in each private range (``private``: 172.31.<n>.10, 192.168.<n>.10,
100.64.<n>.10, as a VPC's neighbours would be) on its loopback, with a TCP listener on port 80
of each and a UDP one on port 53 of the metadata address. A veth (host end
``xtrp<n>``, link 198.19.<n>.0/30, a benchmarking range) joins it to the host. Packets from the
test server's sandbox subnet are policy-routed: to the metadata address through the trap, to the
sandbox subnet as usual, everything else ``unreachable``. So whatever the firewall under test
does, a sandbox packet can only ever reach this host or the trap."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

METADATA = "169.254.169.254"

# runs inside the trap namespace: accept and record, never answer anything but "trapped"
LISTENER = r"""
import json, socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp(address):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 80)); s.listen(64)
    while True:
        conn, peer = s.accept()
        log.write(json.dumps({"kind": "tcp", "peer": peer[0], "to": address}) + "\n")
        conn.sendall(b"trapped"); conn.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[2], 53))
    while True:
        _, peer = s.recvfrom(65535)
        log.write(json.dumps({"kind": "udp", "peer": peer[0], "to": sys.argv[2]}) + "\n")
threading.Thread(target=udp, daemon=True).start()
for address in sys.argv[3:]:
    threading.Thread(target=tcp, args=(address,), daemon=True).start()
print("ready", flush=True)
tcp(sys.argv[2])
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class Trap:
    instance: str
    sandbox_subnet: str
    workdir: Path
    octet: int = field(init=False)
    proc: subprocess.Popen[str] | None = None

    def __post_init__(self) -> None:
        self.octet = int(ipaddress.IPv4Network(self.sandbox_subnet).network_address.packed[1])

    @property
    def netns(self) -> str:
        return f"attrap-{self.instance}"

    @property
    def host_ifname(self) -> str:
        return f"xtrp{self.octet}"

    @property
    def table(self) -> int:
        return 21000 + self.octet

    @property
    def log_path(self) -> Path:
        return self.workdir / "trap.log"

    def link(self, last: int) -> str:
        return f"198.19.{self.octet}.{last}"

    @property
    def private(self) -> list[str]:
        return [f"172.31.{self.octet}.10", f"192.168.{self.octet}.10", f"100.64.{self.octet}.10"]

    def start(self) -> None:
        self.stop()  # a leftover of an aborted run
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        inside = ["ip", "netns", "exec", self.netns]
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.host_ifname, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "addr", "add", f"{self.link(1)}/30", "dev", self.host_ifname)
        sh("ip", "link", "set", self.host_ifname, "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "addr", "add", f"{self.link(2)}/30", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        for address in (METADATA, *self.private):
            sh(*inside, "ip", "addr", "add", f"{address}/32", "dev", "lo")
        sh(*inside, "ip", "route", "add", "default", "via", self.link(1))
        table = str(self.table)
        for address in (METADATA, *self.private):
            route = [f"{address}/32", "via", self.link(2), "dev", self.host_ifname, "table", table]
            sh("ip", "route", "add", *route)
        sh("ip", "route", "add", "unreachable", "default", "table", table)
        sh("ip", "rule", "add", "to", self.sandbox_subnet, "lookup", "main", "priority", str(self.table - 1))
        sh("ip", "rule", "add", "from", self.sandbox_subnet, "lookup", table, "priority", table)
        self.proc = subprocess.Popen(
            [*inside, sys.executable, "-c", LISTENER, str(self.log_path), METADATA, *self.private],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the trap's listener did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        for priority in (self.table, self.table - 1):
            while sh("ip", "rule", "del", "priority", str(priority), check=False).returncode == 0:
                pass
        sh("ip", "route", "flush", "table", str(self.table), check=False)
        sh("ip", "link", "del", self.host_ifname, check=False)
        sh("ip", "netns", "del", self.netns, check=False)

    def hits(self) -> list[dict[str, str]]:
        time.sleep(0.2)
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def arm(self) -> None:
        """Prove the trap is live (a connection from within its own namespace, never from the
        host, whose route to the metadata address is the real one), then forget that hit."""
        code = f"import socket; socket.create_connection(('{METADATA}', 80), timeout=3).close()"
        sh("ip", "netns", "exec", self.netns, sys.executable, "-c", code)
        deadline = time.monotonic() + 5
        while not self.hits() and time.monotonic() < deadline:
            pass
        assert self.hits(), "the trap recorded nothing: it cannot show an escape either"
        self.log_path.write_text("")
